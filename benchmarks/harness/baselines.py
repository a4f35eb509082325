"""Same-run baselines: what a receiver that does (almost) nothing achieves on this machine now.

- :class:`BareScp`: a pynetdicom SCP that writes each received instance and fsyncs it, nothing
  else (``bench_ingest.py``'s baseline): the floor of a durable C-STORE receiver here.
- :func:`standalone_listener`: our C-STORE listener on its own (no Ray, no stages), with the
  whole durability contract (write, fsync, rename, directory fsync, ledger commit, audit row).

:func:`ingest_baselines` sends a run's own studies with the run's own load generator settings to
each, so the pipeline's ingest rate compares like with like.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from actors.adapters.dimse import Listener
from benchmarks.harness.load import LoadGenerator, SendRecord, Study
from core.config import ListenerConfig, StorageConfig
from state.ledger import open_ledger

__all__ = ["BareScp", "bare_scp", "ingest_baselines", "instances_per_s", "standalone_listener"]


class BareScp:
    """The baseline: write the received bytes to a file and fsync; nothing else."""

    def __init__(self, directory: Path, ae_title: str = "PACSAI") -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.maximum_pdu_size = 0
        self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = int(self._server.server_address[1])

    def _store(self, event: Any) -> int:
        path = self._dir / f"{event.request.AffectedSOPInstanceUID}.dcm"
        with path.open("wb") as f:
            f.write(event.encoded_dataset())
            f.flush()
            os.fsync(f.fileno())
        return 0x0000

    def stop(self) -> None:
        """Stop listening."""
        self._server.shutdown()


@contextlib.contextmanager
def bare_scp(directory: Path) -> Iterator[BareScp]:
    """A running :class:`BareScp`, stopped afterwards."""
    scp = BareScp(directory)
    try:
        yield scp
    finally:
        scp.stop()


@contextlib.contextmanager
def standalone_listener(workdir: Path, quiet_period_s: float = 2.0) -> Iterator[Listener]:
    """Our durable C-STORE listener alone, over a fresh SQLite ledger in ``workdir``."""
    ledger = open_ledger(StorageConfig(var_dir=str(workdir)))
    listener = Listener(
        ListenerConfig(port=0, min_free_bytes=0), workdir / "spool", workdir / "rejected", ledger, quiet_period_s
    )
    listener.start()
    try:
        yield listener
    finally:
        listener.stop()
        ledger.close()


def instances_per_s(records: Sequence[SendRecord]) -> float:
    """Instances acknowledged per second, from the first send's start to the last one's end."""
    done = [r for r in records if r.ok]
    if not done:
        return 0.0
    seconds = max(r.end_ts for r in done) - min(r.start_ts for r in records)
    return sum(r.instances for r in done) / seconds if seconds > 0 else 0.0


def ingest_baselines(studies: Sequence[Study], associations: int, rate: float | None = None) -> dict[str, Any]:
    """Send ``studies`` to a bare fsync SCP and to a standalone listener, as the run sends them.

    Returns:
        ``bare_scp_inst_per_s``, ``listener_inst_per_s``, their ratio, how many studies and
        instances, and any failures (a baseline that failed shows 0, it does not raise).
    """
    out: dict[str, Any] = {"studies": len(studies), "instances": sum(s.instances for s in studies)}
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as tmp:
        root = Path(tmp)
        for name, receiver in (("bare_scp", bare_scp(root / "bare")), ("listener", standalone_listener(root / "ours"))):
            with receiver as server:
                records = LoadGenerator(port=server.port, associations=associations, rate=rate).run(studies)
            out[f"{name}_inst_per_s"] = round(instances_per_s(records), 1)
            failed = [r for r in records if not r.ok]
            if failed:
                out[f"{name}_failed"] = len(failed)
                out[f"{name}_first_error"] = failed[0].error
    bare = out["bare_scp_inst_per_s"]
    out["listener_to_bare_ratio"] = round(out["listener_inst_per_s"] / bare, 3) if bare else None
    out["method"] = (
        "the run's studies, the run's load generator (pynetdicom, one association per study, "
        f"{associations} at once), to each receiver alone before the pipeline starts"
    )
    return out
