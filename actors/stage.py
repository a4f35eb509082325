"""The stage runner: pull due jobs of one state from the ledger and work on them.

Every pipeline stage is the same loop around a different ``work`` function: lease up to
``concurrency`` jobs (highest priority first), run each in a thread, and map failures to the
retry policy. Leases of jobs in flight are renewed, so only a crashed worker's jobs are taken
again. The ledger, not this process's memory, is the queue: killing the process loses nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.adapters.ledger import SqliteLedger
from core.config import RetryConfig, StageConfig
from core.errors import DependencyUnavailable, LeaseLost, ModelError, TransientIOError
from core.ledger import RetryPolicy
from core.types import Job, JobState

__all__ = ["StageRunner", "StageRuntime", "StageShell", "configure_logging"]

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0


@dataclass(frozen=True, slots=True)
class StageRuntime:
    """What every stage needs besides its own config slice."""

    ledger_path: Path
    stage: StageConfig
    lease_s: float
    poll_interval_s: float
    retry: RetryConfig
    log_level: str = "INFO"


class StageRunner:
    """Runs ``work(job)`` for due jobs in ``state``, ``concurrency`` at a time."""

    def __init__(
        self,
        name: str,
        state: JobState,
        runtime: StageRuntime,
        ledger: SqliteLedger,
        work: Callable[[Job], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Args:
        name: Stage name, used in leases, health and audit (``stage:<name>``).
        state: The ledger state this stage takes work from.
        runtime: Stage config, lease and poll settings, retry policy.
        ledger: This process's ledger.
        work: Does the stage's work for one leased job and transitions it; raises on failure.
        clock: Wall clock.
        """
        self.name = name
        self.state = state
        self._rt = runtime
        self._ledger = ledger
        self._work = work
        self._clock = clock
        self._policy = RetryPolicy.from_config(runtime.retry)
        self._owner = f"{name}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._pool = ThreadPoolExecutor(max_workers=runtime.stage.concurrency)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._in_flight: dict[int, Job] = {}
        self._lock = threading.Lock()
        self.processed = 0
        self.failures = 0
        self.last_error = ""
        self._last_beat = 0.0

    @property
    def actor(self) -> str:
        """The audit-trail name of this stage."""
        return f"stage:{self.name}"

    def start(self) -> None:
        """Start the loop in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name=f"stage-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop taking work, wait for work in flight, give back unused leases."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            left = list(self._in_flight.values())
        for job in left:
            self._ledger.release(job)

    def health(self) -> dict[str, Any]:
        """Return counters for the supervisor."""
        with self._lock:
            in_flight = len(self._in_flight)
        alive = self._thread is not None and self._thread.is_alive()
        return {
            "stage": self.name,
            "alive": alive,
            "processed": self.processed,
            "failures": self.failures,
            "in_flight": in_flight,
            "last_error": self.last_error,
        }

    def run_once(self) -> int:
        """Lease and start one round of jobs; return how many were started."""
        with self._lock:
            free = self._rt.stage.concurrency - len(self._in_flight)
        jobs = self._ledger.lease(self.state, self._owner, free, self._rt.lease_s, self._clock())
        for job in jobs:
            with self._lock:
                self._in_flight[job.job_id] = job
            self._pool.submit(self._run, job)
        return len(jobs)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                started = self.run_once()
                self._maintain()
            except Exception as exc:  # the loop must survive a bad round (e.g. ledger busy)
                logger.exception("stage %s: lease round failed", self.name)
                self.last_error = f"{type(exc).__name__}: {exc}"
                started = 0
            if not started:
                self._stop.wait(self._rt.poll_interval_s)

    def _maintain(self) -> None:
        now = self._clock()
        if now - self._last_beat < HEARTBEAT_S:
            return
        self._last_beat = now
        with self._lock:
            jobs = list(self._in_flight.values())
        if jobs:
            self._ledger.renew(self._owner, [j.job_id for j in jobs], now + self._rt.lease_s)
        h = self.health()
        self._ledger.heartbeat(
            self.name,
            os.getpid(),
            now,
            processed=h["processed"],
            failures=h["failures"],
            in_flight=h["in_flight"],
            last_error=h["last_error"],
        )

    def _run(self, job: Job) -> None:
        try:
            self._work(job)
            self.processed += 1
        except LeaseLost:
            logger.warning("stage %s: lost the lease of job %d", self.name, job.job_id)
        except DependencyUnavailable as exc:
            self._retry(job, str(exc), unavailable=True)
        except (TransientIOError, OSError) as exc:
            self._retry(job, f"{type(exc).__name__}: {exc}", unavailable=False)
        except ModelError as exc:
            self._retry(job, f"ModelError: {exc.reason}", unavailable=False)
        except Exception as exc:  # the broad catch at the stage boundary: count it, retry
            logger.exception("stage %s: job %d failed", self.name, job.job_id)
            self._retry(job, f"{type(exc).__name__}: {exc}", unavailable=False)
        finally:
            with self._lock:
                self._in_flight.pop(job.job_id, None)

    def _retry(self, job: Job, error: str, *, unavailable: bool) -> None:
        self.failures += 0 if unavailable else 1
        self.last_error = error[:500]
        try:
            state = self._ledger.defer(
                job, self._clock(), self._policy, error[:1000], unavailable=unavailable,
                actor=self.actor,
            )
        except LeaseLost:
            return
        if state is JobState.DEAD:
            logger.error("stage %s: job %d is dead: %s", self.name, job.job_id, error[:200])


def configure_logging(level: str) -> None:
    """Configure this process's root logger once (each Ray actor is its own process)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root.setLevel(level)


class StageShell:
    """Base of the stage actors: owns the ledger connection and the runner.

    Subclasses (``XxxActor`` in ``actors/xxx.py``) build their work object and call ``_start``.
    """

    name = "stage"
    state = JobState.RECEIVING

    def _start(self, runtime: StageRuntime, work: Callable[[Job], None]) -> None:
        configure_logging(runtime.log_level)
        self._runner = StageRunner(self.name, self.state, runtime, self._ledger, work)
        self._runner.start()

    def _open_ledger(self, runtime: StageRuntime) -> SqliteLedger:
        self._ledger = SqliteLedger(runtime.ledger_path)
        return self._ledger

    def health(self) -> dict[str, Any]:
        """Return the runner's counters (the supervisor calls this)."""
        return self._runner.health()

    def stop(self) -> None:
        """Stop taking work and give back leases."""
        self._runner.stop()
