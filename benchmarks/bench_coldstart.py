"""Cold start and crash restart, as a user meets them: ``pacsai up`` in a terminal, then kill -9.

One run, one private Orthanc as the PACS (it knows our listener), the real ``pacsai up`` CLI as a
subprocess on a temp config and var dir (``configs/test.yaml``: every model family, two Ray
CPUs, short assembly timers; the default ``stages.lease_s`` of 60 s unless ``--lease-s``):

- ``first_store_s``: from starting ``pacsai up`` to the first C-STORE answered success (dcmtk
  ``storescu`` in a loop until it succeeds; goal <= 5 s);
- ``first_sr_s``: to that study's SR stored in Orthanc (the models deploy meanwhile);
- ``listener_line_s`` / ``models_line_s``: when ``pacsai up`` printed its listener line and its
  models-ready line (the seconds it prints itself are in ``up_lines``);
- then ``--studies`` more studies are sent, and once one of them is leased by a stage (in
  flight, inference preferred) the whole process tree of ``pacsai up`` (the CLI, Ray's GCS and
  raylet, every actor and replica) is killed with SIGKILL; ``pacsai up`` is started again and
  ``resume_s`` is the time from that start to every one of those studies having its SR in
  Orthanc (goal: below ``first_sr_s + 10``; a lease waited out would take ``lease_s``).
  ``taken_back`` counts the ``lease_taken_back`` audit events of the restart, ``srs_max`` the
  most SRs one study got in Orthanc (goal 1), ``first_attempts`` / ``resumed_attempts`` the
  retries the studies spent (waiting for the models to deploy spends none: goal 0).

Same-run baseline: ``ray_init_s``, a bare ``ray.init`` of a local Ray in a fresh interpreter,
the floor under any start of a Ray pipeline on this machine; ``over_ray_init_s`` is
``first_store_s`` less it (what the CLI, the run and the listener's actor add: steadier than
either on a machine shared with other work).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_coldstart.py [--studies 6] [--lease-s 60]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from _common import ROOT, emit  # benchmarks/ is on sys.path when run as a script; puts the root there

from benchmarks.harness.stack import aim, load_raw
from core.config import parse_config
from demo.dcmtk import storescu
from demo.orthanc import OrthancProcess, free_port
from state.ledger import open_ledger
from synthetic.synthetic_dicom import make_cxr_study, save_study


class Up:
    """``pacsai up --config PATH`` in its own session, its output lines timed as they come."""

    def __init__(self, config: Path) -> None:
        env = dict(os.environ, RAY_ADDRESS="", PYTHONPATH=str(ROOT), TCP_NODELAY="1")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "actors.cli", "up", "--config", str(config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.t0, line.rstrip()))

    def seen(self, pattern: str) -> float | None:
        """When a line matching ``pattern`` was printed (seconds from the start), if it was."""
        return next((t for t, line in self.lines if re.search(pattern, line)), None)

    def kill_tree(self) -> int:
        """SIGKILL the CLI and every process under it (Ray's GCS, raylet, workers); return how many."""
        import psutil  # Ray's vendored copy: importing Ray (the harness) put it on sys.path

        root = psutil.Process(self.proc.pid)
        procs = [root, *root.children(recursive=True)]
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=30)
        self.proc.wait(10)
        return len(procs)

    def stop(self) -> int:
        """SIGTERM, as an operator stops it; return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.kill_tree()
        return int(self.proc.returncode)


def ray_init_s() -> float:
    """A bare local ``ray.init`` in a fresh interpreter (import included), until it returns."""
    code = "import ray; ray.init(num_cpus=2, include_dashboard=False, logging_level='ERROR'); ray.shutdown()"
    began = time.monotonic()
    subprocess.run([sys.executable, "-c", code], env=dict(os.environ, RAY_ADDRESS=""), check=True, capture_output=True)
    return time.monotonic() - began


def study_files(work: Path, seed: int) -> tuple[str, list[Path]]:
    datasets = make_cxr_study(seed=seed, findings=frozenset({"effusion"}), patient_id=f"P{seed}", accession=f"A{seed}")
    return str(datasets[0].StudyInstanceUID), save_study(datasets, work / "in" / str(seed))


def first_store(up: Up, files: list[Path], port: int, timeout_s: float) -> float:
    """Send until the listener answers success; seconds from ``pacsai up``'s start."""
    deadline = up.t0 + timeout_s
    while time.monotonic() < deadline:
        if storescu(files, "127.0.0.1", port, "PACSAI", timeout_s=30).returncode == 0:
            return time.monotonic() - up.t0
        if up.proc.poll() is not None:
            out = [line for _, line in up.lines if "(pid=" not in line]  # the CLI's own lines, not Ray's copies
            raise RuntimeError(f"pacsai up exited with {up.proc.returncode}:\n" + "\n".join(out[-40:]))
        time.sleep(0.05)
    raise TimeoutError(f"no C-STORE success within {timeout_s} s")


def srs(pacs: OrthancProcess, uid: str) -> int:
    return len(pacs.instances_of_study(uid, modality="SR"))


def wait_srs(pacs: OrthancProcess, uids: list[str], t0: float, timeout_s: float) -> float:
    """Seconds from ``t0`` until every study has an SR in the PACS."""
    left = set(uids)
    deadline = time.monotonic() + timeout_s
    while left and time.monotonic() < deadline:
        left = {u for u in left if srs(pacs, u) == 0}
        time.sleep(0.1)
    if left:
        raise TimeoutError(f"{len(left)} of {len(uids)} studies without an SR after {timeout_s} s")
    return time.monotonic() - t0


def wait_in_flight(cfg: Any, uids: list[str], timeout_s: float) -> tuple[int, str]:
    """Wait until a stage holds a lease on one of the studies (inference preferred, for up to
    half the timeout); return how many are not yet delivered, and the leased job's state."""
    ledger = open_ledger(cfg.storage)
    began = time.monotonic()
    try:
        while time.monotonic() - began < timeout_s:
            jobs = [j for u in uids for j in ledger.jobs.for_study(u)]
            leased = [j for j in jobs if j.lease_owner and j.state.value != "receiving"]
            linked = [j for j in leased if j.state.value == "linked"]
            pick = linked or (leased if time.monotonic() - began > timeout_s / 2 else [])
            if pick:
                return sum(1 for j in jobs if j.state.value != "delivered"), pick[0].state.value
            time.sleep(0.01)
        raise TimeoutError(f"no study of {len(uids)} leased within {timeout_s} s")
    finally:
        ledger.close()


def attempts(cfg: Any, uids: list[str]) -> int:
    """The most retries any of these studies' jobs spent (waiting for a model spends none)."""
    ledger = open_ledger(cfg.storage)
    try:
        return max(j.attempts for u in uids for j in ledger.jobs.for_study(u))
    finally:
        ledger.close()


def taken_back(cfg: Any, uids: list[str]) -> int:
    """``lease_taken_back`` audit events of these studies (leases of a dead run taken at start)."""
    ledger = open_ledger(cfg.storage)
    try:
        return sum(1 for u in uids for e in ledger.audit.events(u) if e.type == "lease_taken_back")
    finally:
        ledger.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-coldstart-") as tmp:
        work = Path(tmp)
        port = free_port()
        pacs = OrthancProcess(work / "orthanc", modalities={"pacsai": ("PACSAI", "127.0.0.1", port)}).start()
        try:
            raw = aim(load_raw(), work / "var", port, pacs, site="coldstart")
            raw["stages"] = {**raw.get("stages", {}), "lease_s": args.lease_s}
            raw["ray"] = {**raw.get("ray", {}), "namespace": f"coldstart-{os.getpid()}"}
            cfg = parse_config(raw)
            config = work / "config.yaml"
            config.write_text(yaml.safe_dump(raw))
            first_uid, first_files = study_files(work, 1)
            batch = [study_files(work, 100 + i) for i in range(args.studies)]
            floor = ray_init_s()

            up = Up(config)
            store_s = first_store(up, first_files, port, args.timeout_s)
            sr_s = wait_srs(pacs, [first_uid], up.t0, args.timeout_s)
            spent = attempts(cfg, [first_uid])
            models_s = wait_line(up, r"models ready|models .*NOT", 300)
            uids = [u for u, _ in batch]
            for _, files in batch:
                if storescu(files, "127.0.0.1", port, "PACSAI").returncode != 0:
                    raise RuntimeError("a study of the batch was refused")
            in_flight, leased_state = wait_in_flight(cfg, uids, 60)
            killed = up.kill_tree()
            first_lines = [line for _, line in up.lines if line.startswith("pacsai up:")]

            again = Up(config)
            resume_s = wait_srs(pacs, uids, again.t0, args.timeout_s)
            back = taken_back(cfg, uids)
            srs_max = max(srs(pacs, u) for u in [first_uid, *uids])
            status = again.stop()
            return {
                "name": "coldstart",
                "first_store_s": round(store_s, 2),
                "first_sr_s": round(sr_s, 2),
                "listener_line_s": _round(up.seen(r"pacsai up: listener")),
                "models_line_s": _round(models_s),
                "resume_s": round(resume_s, 2),
                "lease_s": args.lease_s,
                "first_attempts": spent,
                "resumed_attempts": attempts(cfg, uids),
                "in_flight_at_kill": in_flight,
                "killed_in": leased_state,
                "processes_killed": killed,
                "taken_back": back,
                "srs_max": srs_max,
                "studies": 1 + len(uids),
                "ray_init_s": round(floor, 2),
                "over_ray_init_s": round(store_s - floor, 2),
                "restart_exit": status,
                "up_lines": first_lines,
                "goals": {"first_store_s": 5.0, "resume_s": round(sr_s + 10, 2)},
            }
        finally:
            pacs.discard()


def wait_line(up: Up, pattern: str, timeout_s: float) -> float | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = up.seen(pattern)
        if found is not None:
            return found
        time.sleep(0.1)
    return None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=6, help="studies in flight at the kill")
    p.add_argument("--lease-s", type=float, default=60.0, help="stages.lease_s of the pipeline")
    p.add_argument("--timeout-s", type=float, default=300.0, help="give up waiting after this long")
    emit(run(p.parse_args()))


if __name__ == "__main__":
    main()
