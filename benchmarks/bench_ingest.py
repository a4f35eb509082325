"""C-STORE ingest: our durable listener vs a bare pynetdicom SCP that only writes and fsyncs.

dcmtk ``storescu`` (TCP_NODELAY=1) sends N CT instances of 512x512 over one association to each
receiver in turn, several rounds alternating, on this machine. Our listener does the whole
durability contract (write, fsync, atomic rename, directory fsync, SQLite commit with
synchronous=FULL, sha256, header parse, audit row); the baseline does write + fsync only.
Prints one JSON line per round and receiver, then a summary line with the median ratio.

    .venv/bin/python benchmarks/bench_ingest.py [--n 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import emit  # benchmarks/ is on sys.path when run as a script
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from actors.adapters.dimse import Listener
from core.config import ListenerConfig, StorageConfig
from demo.dcmtk import storescu
from state.ledger import open_ledger
from synthetic.synthetic_dicom import make_ct_series, save_study


class BareScp:
    """The baseline: write the received bytes to a file and fsync; nothing else."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title="PACSAI")
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
        self._server.shutdown()


def _run(files: list[Path], port: int) -> float:
    started = time.perf_counter()
    res = storescu(files, "127.0.0.1", port, "PACSAI")
    seconds = time.perf_counter() - started
    if res.returncode != 0:
        raise RuntimeError(f"storescu failed: {res.stderr[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        files = save_study(make_ct_series(seed=7, n_slices=args.n, rows=512, cols=512), root / "src")
        rates: dict[str, list[float]] = {"bare_scp": [], "pacsai_listener": []}
        for rnd in range(args.rounds):
            # Alternate which receiver goes first, so drift on a shared machine hits both.
            order = ["bare_scp", "pacsai_listener"] if rnd % 2 == 0 else ["pacsai_listener", "bare_scp"]
            for name in order:
                rates[name].append(args.n / _measure(name, files, root / f"{name}{rnd}"))
            ratio = rates["pacsai_listener"][-1] / rates["bare_scp"][-1]
            emit(
                {
                    "name": "ingest",
                    "variant": "round",
                    "round": rnd,
                    "n": args.n,
                    "bare_scp_inst_per_s": round(rates["bare_scp"][-1], 1),
                    "pacsai_listener_inst_per_s": round(rates["pacsai_listener"][-1], 1),
                    "ratio": round(ratio, 3),
                }
            )
        bare_med = statistics.median(rates["bare_scp"])
        ours_med = statistics.median(rates["pacsai_listener"])
        paired = [o / b for o, b in zip(rates["pacsai_listener"], rates["bare_scp"], strict=True)]
        emit(
            {
                "name": "ingest",
                "variant": "summary",
                "n": args.n,
                "rounds": args.rounds,
                "bare_scp_inst_per_s": round(bare_med, 1),
                "pacsai_listener_inst_per_s": round(ours_med, 1),
                "ratio": round(ours_med / bare_med, 3),
                "paired_ratio_median": round(statistics.median(paired), 3),
                "p50_ms": round(1000 / ours_med, 2),
                "goal": ">= 0.9",
            }
        )


def _measure(name: str, files: list[Path], workdir: Path) -> float:
    """Seconds for storescu to send ``files`` into a fresh receiver of kind ``name``."""
    if name == "bare_scp":
        bare = BareScp(workdir)
        try:
            return _run(files, bare.port)
        finally:
            bare.stop()
    ledger = open_ledger(StorageConfig(var_dir=str(workdir)))
    ours = Listener(
        ListenerConfig(port=0, min_free_bytes=0), workdir / "spool", workdir / "rejected", ledger, quiet_period_s=2.0
    )
    ours.start()
    try:
        return _run(files, ours.port)
    finally:
        ours.stop()
        ledger.close()


if __name__ == "__main__":
    main()
