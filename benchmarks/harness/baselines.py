"""Same-run baselines: what a receiver that does (almost) nothing achieves on this machine now.

- :class:`BareScp`: a pynetdicom SCP that writes each received instance and fsyncs it, nothing
  else (``bench_ingest.py``'s baseline): the floor of a durable C-STORE receiver here.
- :func:`standalone_listener`: our C-STORE listener on its own (no Ray, no stages), with the
  whole durability contract (write, fsync, rename, directory fsync, ledger commit, audit row).
- :func:`receiver_processes`: either of them, or dcmtk's ``storescp``, in processes of their
  own (``python -m benchmarks.harness.baselines``); several listener processes share one port
  as ``listener.instances`` does (``SO_REUSEPORT``).

:func:`ingest_baselines` sends a run's own studies with the run's own load generator settings to
each, so the pipeline's ingest rate compares like with like.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from actors.adapters.dimse import Listener
from benchmarks.harness.load import LoadGenerator, SendRecord, Study
from benchmarks.harness.record import ROOT
from core.config import EncryptionConfig, ListenerConfig, StorageConfig
from demo.orthanc import free_port
from state.ledger import open_ledger

__all__ = [
    "BareScp",
    "RECEIVERS",
    "ReceiverRun",
    "STORESCP_FSYNC_OPTIONS",
    "STORESCP_OPTIONS",
    "bare_scp",
    "ingest_baselines",
    "instances_per_s",
    "receiver_processes",
    "standalone_listener",
]

RECEIVERS = ("bare_scp", "pacsai_listener", "dcmtk_storescp", "dcmtk_storescp_fsync")
"""What :func:`receiver_processes` runs."""
STORESCP_OPTIONS = ("--fork", "+B")
"""dcmtk ``storescp``: a process per association (else it serves one association at a time) and
bit-preserving writes (the data set as received, as we keep it). It has no fsync option."""
STORESCP_FSYNC_OPTIONS = ("--exec-on-reception", "sync #p/#f", "--exec-sync")
"""``dcmtk_storescp_fsync``: storescp that runs coreutils ``sync FILE`` (an fsync of the file)
on each received file and waits for it before it answers: its nearest durable configuration
(no directory fsync; a fork and exec per instance)."""
_READY, _STATS = "RECEIVER-READY", "RECEIVER-STATS "


class BareScp:
    """The baseline: write the received bytes to a file and fsync; nothing else."""

    def __init__(self, directory: Path, ae_title: str = "PACSAI", port: int = 0) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.maximum_pdu_size = 0
        self._server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
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
def standalone_listener(
    workdir: Path, quiet_period_s: float = 2.0, *, port: int = 0, instances: int = 1, encryption: bool = True
) -> Iterator[Listener]:
    """Our durable C-STORE listener alone, over a (fresh) SQLite ledger in ``workdir``;
    ``instances`` > 1: one of that many processes sharing ``port`` and ``workdir``;
    ``encryption``: files sealed at rest (``storage.encryption.enabled``, the default)."""
    storage = StorageConfig(var_dir=str(workdir), encryption=EncryptionConfig(enabled=encryption))
    ledger = open_ledger(storage)
    cfg = ListenerConfig(port=port, min_free_bytes=0, instances=instances)
    listener = Listener(cfg, workdir / "spool", workdir / "rejected", ledger, quiet_period_s)
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


@dataclass
class ReceiverRun:
    """Receiver processes serving one port; ``stats`` holds what each said when it stopped."""

    kind: str
    port: int
    processes: int
    pids: list[int] = field(default_factory=list)
    """The receiver processes (storescp: its parent, which forks one per association)."""
    stats: list[dict[str, Any]] = field(default_factory=list)
    senders_cpu_s = 0.0
    """CPU seconds the senders spent (set by the caller that measured them)."""

    def profile(self, out: Path, rate: int = 100, *, gil: bool = True) -> list[subprocess.Popen[bytes]]:
        """Attach ``py-spy record`` (raw stacks) to each receiver process, from now until it
        ends, sampled without stopping it (``--nonblocking``). ``gil``: only the threads holding
        the GIL (what a Python receiver's CPU time is made of); else every thread, idle ones
        too (``--idle``: where each association's wall time goes, waits for fsyncs included).
        Process ``k`` writes ``out`` with ``-<k>`` before its suffix when there are several."""
        spy = str(Path(sys.executable).parent / "py-spy")
        procs = []
        for k, pid in enumerate(self.pids):
            target = out if len(self.pids) == 1 else out.with_name(f"{out.stem}-{k}{out.suffix}")
            argv = [spy, "record", "--pid", str(pid), "-r", str(rate), "--nonblocking", "-f", "raw", "-o", str(target)]
            argv += ["--gil"] if gil else ["--idle", "--threads"]
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)  # attached before the caller's clock starts
        return procs

    def cpu_s(self) -> float | None:
        """CPU seconds the receiver processes spent while serving (``None``: storescp)."""
        spent = [s["cpu_s"] for s in self.stats if "cpu_s" in s]
        return round(sum(spent), 3) if spent else None

    def split(self) -> list[int]:
        """Instances each listener process received (``SO_REUSEPORT`` hashes each new
        association to one of them: four senders often land 3:1 or 4:0 on two processes)."""
        return [int(s.get("received", 0)) for s in self.stats if "received" in s]

    def mean_group(self) -> float | None:
        """Instances per group commit over the listener processes (``None``: not a listener)."""
        commits = sum(s.get("group_commits", 0) for s in self.stats)
        return round(sum(s.get("group_items", 0) for s in self.stats) / commits, 2) if commits else None


@contextlib.contextmanager
def receiver_processes(
    kind: str,
    workdir: Path,
    processes: int = 1,
    *,
    metrics: bool = True,
    ray_address: str | None = None,
    encryption: bool = True,
) -> Iterator[ReceiverRun]:
    """Run a receiver of ``kind`` (:data:`RECEIVERS`) in processes of its own on a fresh port.

    Each returns once it serves. Listener processes share ``workdir`` (one spool, one SQLite
    ledger) and the port, as the listener actors of one node do. ``metrics``: the listener
    records its metrics (``ray_address``: into that Ray cluster, joined before it serves);
    ``encryption``: the listener seals its files at rest.

    Raises:
        RuntimeError: A receiver did not come up.
    """
    if kind not in RECEIVERS or (processes > 1 and kind != "pacsai_listener"):
        raise ValueError(f"Got receiver {kind!r} x{processes}; expected one of {RECEIVERS} (only listeners x N)")
    workdir.mkdir(parents=True, exist_ok=True)
    run = ReceiverRun(kind, free_port(), processes)
    procs: list[subprocess.Popen[str]] = []
    try:
        if kind.startswith("dcmtk_storescp"):
            procs.append(_storescp(workdir, run.port, fsync=kind.endswith("_fsync")))
            _wait_port(run.port, procs[0])
        for k in range(processes if not kind.startswith("dcmtk_storescp") else 0):
            argv = _child_argv(kind, workdir, run.port, processes, metrics, ray_address)
            argv += [] if encryption else ["--no-encryption"]
            procs.append(_spawn(argv, workdir / f"{kind}-{k}.log"))
            _wait_ready(procs[-1])  # one after the other: the first migrates the fresh ledger
        run.pids = [p.pid for p in procs]
        yield run
    finally:
        run.stats = [s for s in (_stop(p) for p in procs) if s]


def _child_argv(kind: str, workdir: Path, port: int, processes: int, metrics: bool, ray: str | None) -> list[str]:
    argv = [sys.executable, "-m", "benchmarks.harness.baselines", kind, str(workdir), str(port)]
    argv += ["--processes", str(processes), "--metrics", "1" if metrics else "0"]
    return argv + (["--ray-address", ray] if ray else [])


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TCP_NODELAY="1")
    with log.open("w") as err:  # the child keeps its own descriptor
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
        )


def _storescp(workdir: Path, port: int, *, fsync: bool = False) -> subprocess.Popen[str]:
    argv = ["storescp", *STORESCP_OPTIONS, *(STORESCP_FSYNC_OPTIONS if fsync else ()), "-aet", "PACSAI"]
    argv += ["-od", str(workdir), str(port)]
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, text=True)


def _wait_ready(proc: subprocess.Popen[str], timeout_s: float = 60) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(_READY):
            return
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"receiver {proc.args!r} did not come up (exit {proc.poll()}; its log is in its workdir)")


def _wait_port(port: int, proc: subprocess.Popen[str], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"storescp on port {port} did not come up (exit {proc.poll()})")


def _stop(proc: subprocess.Popen[str]) -> dict[str, Any] | None:
    """Stop one receiver: EOF on a Python child's stdin (it answers with its stats), SIGTERM
    to storescp."""
    if proc.stdin is None:
        proc.terminate()
        proc.wait(30)
        return None
    try:
        out, _ = proc.communicate("", timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None
    stats = [line[len(_STATS) :] for line in out.splitlines() if line.startswith(_STATS)]
    return json.loads(stats[-1]) if stats else None


def _serve(args: argparse.Namespace) -> None:
    """A receiver process: serve until stdin closes, then print what it did."""
    from actors.adapters.metrics import recorder

    workdir = Path(args.workdir)
    recorder.switch(args.metrics == "1")
    if args.ray_address:
        import ray

        ray.init(address=args.ray_address, logging_level="WARNING", log_to_driver=False)
    if args.kind == "bare_scp":
        scp = BareScp(workdir, port=args.port)
        print(_READY, flush=True)
        cpu = _cpu_s()
        sys.stdin.read()
        scp.stop()
        print(_STATS + json.dumps({"pid": os.getpid(), "cpu_s": round(_cpu_s() - cpu, 3)}), flush=True)
        return
    with standalone_listener(workdir, port=args.port, instances=args.processes, encryption=args.encryption) as listener:
        print(_READY, flush=True)
        cpu = _cpu_s()
        sys.stdin.read()
        stats = {"pid": os.getpid(), "received": listener.received, "failed": listener.failed}
        stats["cpu_s"] = round(_cpu_s() - cpu, 3)
        groups = getattr(listener.intake, "groups", None)  # absent before group commit (a baseline run)
        if groups is not None:
            stats |= {"group_commits": groups.commits, "group_items": groups.items}
    print(_STATS + json.dumps(stats), flush=True)


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.harness.baselines KIND WORKDIR PORT``: one receiver process."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("kind", choices=["bare_scp", "pacsai_listener"])
    parser.add_argument("workdir")
    parser.add_argument("port", type=int)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--metrics", choices=["0", "1"], default="1")
    parser.add_argument("--ray-address", default="")
    parser.add_argument("--no-encryption", dest="encryption", action="store_false", help="files in clear")
    _serve(parser.parse_args(argv))


if __name__ == "__main__":
    main()
