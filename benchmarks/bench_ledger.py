"""Ledger throughput: jobs leased and transitioned per second by 4 concurrent stage workers.

For each backend (a SQLite file; PostgreSQL, a private server started here with Debian's
``initdb``/``pg_ctl``, fsync on), N jobs wait in ``complete``. Four worker *processes* (as the
stage actors are) each open their own ledger and move jobs to ``validated`` with one audit
event per transition, as a stage does:

- ``--mode ledger`` (default): the ledger's own cost. Each worker loops: lease as a stage does
  (up to twice the stage concurrency at once), transition each job; until none is left.
- ``--mode runner``: the same through the real ``StageRunner`` (thread pool, backlog,
  wake-ups), to see what the runner adds.

The baseline, on the same database in the same run: one connection doing N single-row
``UPDATE ... COMMIT``. Rounds alternate which goes first; one JSON line per backend gives the
medians and the per-round ratios: ``backend``, ``ops_per_s``, ``bare_ops_per_s``, ``ratio``
(goal >= 0.5).

    .venv/bin/python benchmarks/bench_ledger.py [--n 1000] [--workers 4] [--rounds 3] [--mode ledger]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import emit  # benchmarks/ is on sys.path when run as a script; puts the root there

from actors.stage import StageRunner, StageRuntime
from core.audit import AuditEvent
from core.config import LedgerConfig, RetryConfig, StageConfig, StorageConfig
from core.job import Job
from core.types import AuditEventType, JobState
from state.ledger import Ledger, open_ledger

DSN_ENV = "PACSAI_BENCH_PG_DSN"


def _seed(ledger: Ledger, n: int, round_: int) -> None:
    """N jobs in ``complete``, due now (inserted directly: seeding is not what is measured)."""
    rows = [(f"1.2.{round_}.{k}", 1, JobState.COMPLETE.value, 0.0, 0.0, 0.0, 0.0) for k in range(n)]
    ledger.db.run(
        lambda tx: tx.executemany(
            "INSERT INTO jobs (study_uid, version, state, not_before, created_at, updated_at,"
            " last_instance_at) VALUES (?,?,?,?,?,?,?)",
            rows,
        )
    )


def _count(ledger: Ledger, state: JobState) -> int:
    with ledger.db.read() as tx:
        row = tx.one("SELECT COUNT(*) AS n FROM jobs WHERE state = ?", (state.value,))
    return int(row["n"]) if row else 0


def _transition(ledger: Ledger, name: str, job: Job) -> None:
    event = AuditEvent(
        AuditEventType.VALIDATED, f"stage:{name}", job.study_instance_uid, job_id=job.job_id, detail={"valid": 1}
    )
    ledger.jobs.transition(job, JobState.VALIDATED, time.time(), events=[event])


def _worker(
    storage: StorageConfig, name: str, mode: str, ready: mp.Queue, start: mp.Event, stop: mp.Event, done: mp.Queue
) -> None:
    ledger = open_ledger(storage)
    ready.put(name)
    start.wait()
    if mode == "ledger":
        processed = 0
        while jobs := ledger.jobs.lease(JobState.COMPLETE, name, 2 * StageConfig().concurrency, 60.0, time.time()):
            for job in jobs:
                _transition(ledger, name, job)
            processed += len(jobs)
        stop.wait()
    else:
        runtime = StageRuntime(storage, StageConfig(), lease_s=60.0, poll_interval_s=0.05, retry=RetryConfig())
        runner = StageRunner(name, JobState.COMPLETE, runtime, ledger, lambda job: _transition(ledger, name, job))
        runner.start()
        stop.wait()
        runner.stop()
        processed = runner.processed
    done.put(processed)
    ledger.close()


def _stages(storage: StorageConfig, ledger: Ledger, n: int, workers: int, mode: str) -> float:
    ctx = mp.get_context("spawn")
    ready, start, stop, done = ctx.Queue(), ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(storage, f"w{i}", mode, ready, start, stop, done)) for i in range(workers)
    ]
    for p in procs:
        p.start()
    for _ in procs:  # the clock starts when every worker has opened its ledger
        ready.get(timeout=300)
    target = _count(ledger, JobState.VALIDATED) + n
    began = time.perf_counter()
    start.set()
    while _count(ledger, JobState.VALIDATED) < target:
        time.sleep(0.005)
    elapsed = time.perf_counter() - began
    stop.set()
    assert sum(done.get(timeout=120) for _ in procs) == n
    for p in procs:
        p.join(30)
    return elapsed


def _bare(ledger: Ledger, n: int) -> float:
    """N single-row UPDATE ... COMMIT on one connection of the same database."""
    with ledger.db.read() as tx:
        ids = [int(r["job_id"]) for r in tx.all("SELECT job_id FROM jobs ORDER BY job_id LIMIT ?", (n,))]
    began = time.perf_counter()
    for job_id in ids:
        ledger.db.run(
            lambda tx, j=job_id: tx.execute("UPDATE jobs SET updated_at = ? WHERE job_id = ?", (time.time(), j))
        )
    return time.perf_counter() - began


def run(backend: str, root: Path, args: argparse.Namespace) -> None:
    ledger_cfg = LedgerConfig(
        backend=backend, schema_prefix="bench", dsn_env=DSN_ENV if backend == "postgresql" else None
    )
    storage = StorageConfig(var_dir=str(root / backend), ledger=ledger_cfg)
    ledger = open_ledger(storage)
    staged, bare = [], []
    for round_ in range(args.rounds):
        _seed(ledger, args.n, round_)
        if round_ % 2:
            bare.append(args.n / _bare(ledger, args.n))
            staged.append(args.n / _stages(storage, ledger, args.n, args.workers, args.mode))
        else:
            staged.append(args.n / _stages(storage, ledger, args.n, args.workers, args.mode))
            bare.append(args.n / _bare(ledger, args.n))
    ledger.close()
    ratios = [s / b for s, b in zip(staged, bare, strict=True)]
    emit(
        {
            "name": "ledger",
            "backend": backend,
            "mode": args.mode,
            "n": args.n,
            "workers": args.workers,
            "concurrency": StageConfig().concurrency,
            "rounds": args.rounds,
            "ops_per_s": round(statistics.median(staged), 1),
            "bare_ops_per_s": round(statistics.median(bare), 1),
            "ratio": round(statistics.median(ratios), 3),
            "ratios": [round(r, 3) for r in ratios],
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="jobs per round")
    parser.add_argument("--workers", type=int, default=4, help="concurrent stage worker processes")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median reported)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument(
        "--mode",
        choices=["ledger", "runner"],
        default="ledger",
        help="workers lease and transition directly, or through StageRunner",
    )
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
