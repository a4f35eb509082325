"""Ledger throughput: jobs leased and transitioned per second by 4 concurrent stage workers.

For each backend (SQLite file; PostgreSQL, a private server started here with Debian's
``initdb``/``pg_ctl``, fsync on), N jobs wait in ``complete``. Four worker *processes* (as the
stage actors are) each open their own ledger and loop: lease up to ``--batch`` due jobs, move
each to ``validated`` with one audit event (as a stage does), until none is left. The baseline,
in the same run on the same database: one connection doing N single-row ``UPDATE ... COMMIT``.
Prints one JSON line per backend: ``backend``, ``ops_per_s``, ``bare_ops_per_s``, ``ratio``.

    .venv/bin/python benchmarks/bench_ledger.py [--n 2000] [--workers 4] [--batch 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import emit  # benchmarks/ is on sys.path when run as a script; puts the root there

from core.audit import AuditEvent
from core.config import LedgerConfig, StorageConfig
from core.types import AuditEventType, JobState
from state.ledger import open_ledger

DSN_ENV = "PACSAI_BENCH_PG_DSN"


def _seed(storage: StorageConfig, n: int) -> None:
    """N jobs in ``complete``, due now (inserted directly: seeding is not what is measured)."""
    ledger = open_ledger(storage)
    rows = [(f"1.2.{k}", 1, JobState.COMPLETE.value, 0.0, 0.0, 0.0, 0.0) for k in range(n)]
    ledger.db.run(lambda tx: tx.executemany(
        "INSERT INTO jobs (study_uid, version, state, not_before, created_at, updated_at,"
        " last_instance_at) VALUES (?,?,?,?,?,?,?)", rows))
    ledger.close()


def _worker(storage: StorageConfig, name: str, batch: int, start: mp.Event, done: mp.Queue) -> None:
    ledger = open_ledger(storage)
    start.wait()
    count = 0
    while True:
        jobs = ledger.jobs.lease(JobState.COMPLETE, name, batch, 60.0, time.time())
        if not jobs:
            break
        for job in jobs:
            event = AuditEvent(AuditEventType.VALIDATED, f"bench:{name}", job.study_instance_uid,
                               job_id=job.job_id, detail={"valid": 1})
            ledger.jobs.transition(job, JobState.VALIDATED, time.time(), events=[event])
            count += 1
    ledger.close()
    done.put(count)


def _stages(storage: StorageConfig, workers: int, batch: int) -> tuple[int, float]:
    ctx = mp.get_context("spawn")
    start, done = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(storage, f"w{i}", batch, start, done))
             for i in range(workers)]
    for p in procs:
        p.start()
    time.sleep(3.0)  # every worker has opened its ledger
    began = time.perf_counter()
    start.set()
    total = sum(done.get(timeout=600) for _ in procs)
    elapsed = time.perf_counter() - began
    for p in procs:
        p.join(30)
    return total, elapsed


def _bare(storage: StorageConfig, n: int) -> float:
    """N single-row UPDATE ... COMMIT on one connection of the same database."""
    ledger = open_ledger(storage)
    ids = [r["job_id"] for r in _ids(ledger)][:n]
    began = time.perf_counter()
    for job_id in ids:
        ledger.db.run(lambda tx, j=job_id: tx.execute(
            "UPDATE jobs SET updated_at = ? WHERE job_id = ?", (time.time(), j)))
    elapsed = time.perf_counter() - began
    ledger.close()
    return elapsed


def _ids(ledger: object) -> list[dict]:
    with ledger.db.read() as tx:  # type: ignore[attr-defined]
        return tx.all("SELECT job_id FROM jobs ORDER BY job_id")


def run(backend: str, root: Path, args: argparse.Namespace) -> None:
    ledger = LedgerConfig(backend=backend, dsn_env=DSN_ENV if backend == "postgresql" else None,
                          schema_prefix="bench")
    storage = StorageConfig(var_dir=str(root / backend), ledger=ledger)
    _seed(storage, args.n)
    ops, elapsed = _stages(storage, args.workers, args.batch)
    bare = _bare(storage, ops)
    ops_per_s, bare_per_s = ops / elapsed, ops / bare
    emit({"name": "ledger", "backend": backend, "n": ops, "workers": args.workers,
          "batch": args.batch, "ops_per_s": round(ops_per_s, 1),
          "bare_ops_per_s": round(bare_per_s, 1), "ratio": round(ops_per_s / bare_per_s, 3)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="jobs per backend")
    parser.add_argument("--workers", type=int, default=4, help="concurrent stage workers")
    parser.add_argument("--batch", type=int, default=2, help="jobs leased at once (a stage's concurrency)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    if args.backend in ("sqlite", "both"):
        run("sqlite", root, args)
    if args.backend in ("postgresql", "both"):
        from demo.postgres import PostgresServer

        server = PostgresServer().start()
        os.environ[DSN_ENV] = server.dsn
        try:
            run("postgresql", root, args)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
