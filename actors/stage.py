"""The stage runner: lease due jobs of one state from the ledger and work on them.

Every pipeline stage is the same loop around a different ``work`` function: lease up to
``concurrency`` jobs (highest priority first), run each in a thread, and map failures to the
retry policy. Leases of jobs in flight are renewed, so only a crashed worker's jobs are taken
again. The ledger, not this process's memory, is the queue: killing the process loses nothing.

Idle, a stage polls the ledger every ``poll_interval_s`` (SQLite), or waits for PostgreSQL's
``NOTIFY`` of the commit that made work for it (up to ``notify_wait_s``, or the next job's
``not_before``). Every actor is an ``ActorShell``: its loops (``actors.polling.Loop``) report
true health, and a heartbeat loop records it in the ledger every second.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from actors.adapters.metrics import recorder
from actors.adapters.tracing import study_span
from actors.polling import Loop, SystemClock
from core.config import RetryConfig, StageConfig, StorageConfig
from core.errors import DependencyUnavailable, LeaseLost, ModelError, TransientIOError
from core.health import ActorHealth
from core.job import Job
from core.leases import LeaseOwner, earlier_incarnations
from core.ledger import RetryPolicy
from core.ports import Clock
from core.types import JobState
from state.files import private_umask
from state.ledger import Ledger, open_ledger

__all__ = ["ActorShell", "StageRunner", "StageRuntime", "StageShell", "configure_logging", "stage_label"]

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0


@dataclass(frozen=True, slots=True)
class StageRuntime:
    """What every stage needs besides its own config slice."""

    storage: StorageConfig
    stage: StageConfig
    lease_s: float
    poll_interval_s: float
    retry: RetryConfig
    log_level: str = "INFO"
    notify_wait_s: float = 1.0
    run_id: str = ""
    """The pipeline run (``core.leases``); ``''`` outside a pipeline: a run of this runner alone."""


def stage_label(name: str) -> str:
    """A stage's metric label: its role, without the cell and the index of a cluster's actor.

    >>> stage_label("a/validator-2"), stage_label("router")
    ('validator', 'router')
    """
    role = name.rsplit("/", 1)[-1]
    head, _, tail = role.rpartition("-")
    return head if head and tail.isdigit() else role


class StageRunner:
    """Runs ``work(job)`` for due jobs in ``state``, ``concurrency`` at a time."""

    def __init__(
        self,
        name: str,
        state: JobState,
        runtime: StageRuntime,
        ledger: Ledger,
        work: Callable[[Job], None],
        clock: Clock | None = None,
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
        self._label = stage_label(name)
        self._rt = runtime
        self._ledger = ledger
        self._work = work
        self._clock = clock or SystemClock()
        self._policy = RetryPolicy.from_config(runtime.retry)
        # run|actor|incarnation: a new run, or this actor restarted by Ray (a new process, so a
        # new incarnation), takes these leases back at once instead of waiting for them to
        # expire (core.leases).
        incarnation = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.owner = LeaseOwner(runtime.run_id or f"solo-{uuid.uuid4().hex[:8]}", name, incarnation)
        self._owner = str(self.owner)
        self._taken_back = not runtime.run_id
        self._pool = ThreadPoolExecutor(max_workers=runtime.stage.concurrency, thread_name_prefix=f"{name}-work")
        self._in_flight: dict[int, Job] = {}  # leased: running, or waiting in the backlog
        self._backlog: deque[Job] = deque()
        self._running = 0
        self._lock = threading.Lock()
        self.processed = 0
        self.failures = 0
        self.last_error = ""
        notify = ledger.db.notifies
        self.loop = Loop(
            f"stage:{name}",
            self.run_once,
            runtime.notify_wait_s if notify else runtime.poll_interval_s,
            eager=True,
            idle=self._idle,
            clock=self._clock,
        )

    @property
    def actor(self) -> str:
        """The audit-trail name of this stage."""
        return f"stage:{self.name}"

    @property
    def in_flight(self) -> int:
        """Jobs being worked on now."""
        with self._lock:
            return self._running

    def start(self) -> None:
        """Start the lease loop."""
        self.loop.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop taking work, wait for work in flight, give back unused leases."""
        self.loop.stop(timeout_s)
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            left = list(self._in_flight.values())
        for job in left:
            self._ledger.jobs.release(job)

    def _idle(self, max_wait_s: float) -> None:
        """Wait for work: a NOTIFY (PostgreSQL), the poll interval (SQLite), or one of our own
        jobs finishing, which frees a slot (so a busy stage never sleeps a poll interval)."""
        self._ledger.jobs.wait_for_work(self.state, max_wait_s, self._clock.now())

    def run_once(self) -> int:
        """Refill the backlog if it ran low, start what the free slots allow; return how
        many jobs were leased or started.

        The runner holds at most twice its concurrency: the running jobs and a backlog as
        deep again, leased in one transaction when the backlog is empty. One lease commit
        then serves ``concurrency`` jobs instead of one job per freed slot; the backlog's
        leases are renewed with the running ones, and a higher-priority job that arrives
        waits behind at most ``concurrency`` leased ones.
        """
        if not self._taken_back:  # first round: before leasing anything, free what we held before
            self._take_back_earlier()
        concurrency = self._rt.stage.concurrency
        with self._lock:
            held = len(self._in_flight)
        leased: list[Job] = []
        if held <= concurrency:
            leased = self._ledger.jobs.lease(
                self.state, self._owner, 2 * concurrency - held, self._rt.lease_s, self._clock.now()
            )
        start: list[Job] = []
        with self._lock:
            for job in leased:
                self._in_flight[job.job_id] = job
                self._backlog.append(job)
            while self._running < concurrency and self._backlog:
                start.append(self._backlog.popleft())
                self._running += 1
        for job in start:
            self._pool.submit(self._run, job)
        return len(leased) + len(start)

    def _take_back_earlier(self) -> None:
        """Release the leases this actor's earlier incarnations held in this run (its process
        before Ray restarted it): they are dead, and the jobs need not wait for the leases to
        expire. A ledger error fails the round, which the loop retries."""
        owners = earlier_incarnations(self._ledger.jobs.lease_owners(self._clock.now()), self.owner)
        taken = self._ledger.jobs.take_back(owners, self.actor, self._clock.now())
        if taken:
            logger.warning("stage %s: took back %d lease(s) of its previous process", self.name, taken)
        self._taken_back = True

    def renew(self) -> None:
        """Extend the leases of the jobs in flight (the heartbeat calls this)."""
        with self._lock:
            ids = list(self._in_flight)
        if ids:
            self._ledger.jobs.renew(self._owner, ids, self._clock.now() + self._rt.lease_s)

    def _run(self, job: Job) -> None:
        started = time.perf_counter()
        outcome = "ok"
        try:
            with study_span(self.actor, job.study_instance_uid, job_id=job.job_id, version=job.version):
                self._work(job)
            self.processed += 1
        except LeaseLost:
            outcome = "lease_lost"
            logger.warning("stage %s: lost the lease of job %d", self.name, job.job_id)
        except DependencyUnavailable as exc:
            outcome = "unavailable"
            self._retry(job, str(exc), unavailable=True)
        except (TransientIOError, OSError) as exc:
            outcome = self._failed(exc)
            self._retry(job, f"{type(exc).__name__}: {exc}", unavailable=False)
        except ModelError as exc:
            outcome = self._failed(exc)
            self._retry(job, f"ModelError: {exc.reason}", unavailable=False)
        except Exception as exc:  # the broad catch at the stage boundary: count it, retry
            outcome = self._failed(exc)
            logger.exception("stage %s: job %d failed", self.name, job.job_id)
            self._retry(job, f"{type(exc).__name__}: {exc}", unavailable=False)
        finally:
            with self._lock:
                self._in_flight.pop(job.job_id, None)
                self._running -= 1
            self._ledger.jobs.wake(self.state)
            recorder.observe("pacsai_stage_latency_seconds", time.perf_counter() - started, stage=self._label)
            recorder.inc("pacsai_stage_jobs_total", stage=self._label, outcome=outcome)

    def _failed(self, exc: BaseException) -> str:
        recorder.inc("pacsai_errors_total", where=self.actor, kind=type(exc).__name__)
        return "retry"

    def _retry(self, job: Job, error: str, *, unavailable: bool) -> None:
        self.failures += 0 if unavailable else 1
        self.last_error = error[:500]
        try:
            state = self._ledger.jobs.defer(
                job, self._clock.now(), self._policy, error[:1000], unavailable=unavailable, actor=self.actor
            )
        except LeaseLost:
            return
        except Exception:  # the ledger itself is down: the lease expires and the job returns
            logger.exception("stage %s: could not record the failure of job %d", self.name, job.job_id)
            return
        if state is JobState.DEAD:
            logger.error("stage %s: job %d is dead: %s", self.name, job.job_id, error[:200])


def configure_logging(
    level: str,
    *,
    log_dir: str | os.PathLike[str] | None = None,
    name: str = "actor",
    console_level: str | None = None,
    json_lines: bool | None = None,
) -> None:
    """Configure this process's logging (each Ray actor is its own process).

    The file ``<log_dir>/<name>-<pid>.log`` (rotated) gets ``level``; stderr, which Ray copies to
    the driver's console, gets WARNING and up. Settings the driver exported
    (``actors.adapters.logs.export_for_workers``: the log dir, console level, JSON lines,
    rotation) win over ``log_dir``; ``console_level`` and ``json_lines``, when given, over both.

    Args:
        level: What the file gets (``logging.level``).
        log_dir: Where the file goes unless the driver said otherwise; ``None``: no file.
        name: The actor's name (the file's stem, JSON lines' ``actor``).
        console_level: What stderr gets.
        json_lines: Write the file as JSON lines.
    """
    from dataclasses import replace

    from actors.adapters.logs import LogSettings, install

    settings = LogSettings.from_environment(level, None if log_dir is None else Path(log_dir), name)
    if console_level is not None:
        settings = replace(settings, console_level=console_level)
    if json_lines is not None:
        settings = replace(settings, json_lines=json_lines)
    install(settings)


def _ray_actor_name(cell: str) -> str:
    """This actor's name as the pipeline and the supervisor know it (``a/validator-1`` for the
    Ray actor ``<site>-a-validator-1``), or ``''`` outside an actor."""
    import ray  # only actors call this, inside a Ray worker

    try:
        name = ray.get_runtime_context().get_actor_name() or ""
    except RuntimeError:  # not in a Ray actor (unit tests of a shell)
        return ""
    marker = f"-{cell}-"
    return f"{cell}/{name[name.index(marker) + len(marker) :]}" if marker in name else ""


class ActorShell:
    """Base of every actor: its ledger, its loops, true health, a heartbeat in the ledger.

    Subclasses open the ledger (``_open_ledger``), add their loops (``_add_loop``) and call
    ``_start_heartbeat``.
    """

    name = "actor"
    _ledger: Ledger
    _clock: Clock

    def _open_ledger(self, storage: StorageConfig, log_level: str = "INFO") -> Ledger:
        private_umask()  # an actor on a Ray this process did not start (a cluster node) too
        configure_logging(log_level, log_dir=Path(storage.var_dir) / "logs", name=self.name)
        if storage.cell:  # a cluster runs one per cell (and per index): health rows apart
            self.name = _ray_actor_name(storage.cell) or f"{storage.cell}/{self.name}"
        self._clock = SystemClock()
        self._loops: list[Loop] = []
        self._ledger = open_ledger(storage)
        return self._ledger

    def _add_loop(self, loop: Loop) -> Loop:
        self._loops.append(loop)
        return loop.start()

    def _counters(self) -> tuple[int, int, int, str]:
        """``(processed, failures, in_flight, last_error)`` (subclasses report theirs)."""
        return 0, 0, 0, ""

    def _beat(self) -> int:
        """Record this actor's health in the ledger (and renew leases, for stages)."""
        self._ledger.controls.record_health(self.health(), self._clock.now())
        return 0

    def _start_heartbeat(self) -> None:
        self._heartbeat = Loop(f"{self.name}:heartbeat", self._beat, HEARTBEAT_S, clock=self._clock).start()

    def health(self) -> ActorHealth:
        """What every loop is doing (the supervisor calls this)."""
        processed, failures, in_flight, last_error = self._counters()
        heartbeat = getattr(self, "_heartbeat", None)
        # The heartbeat is a loop like the others: a ledger it cannot write to makes the actor
        # "failing" (the listener's only other loop is its DICOM server, which keeps serving).
        loops = tuple(loop.health() for loop in (*self._loops, *([heartbeat] if heartbeat else [])))
        return ActorHealth(self.name, os.getpid(), processed, failures, in_flight, last_error, loops)

    def stop(self) -> None:
        """Stop every loop (work in flight finishes; the ledger keeps the rest)."""
        heartbeat = getattr(self, "_heartbeat", None)
        if heartbeat is not None:
            heartbeat.stop()
        for loop in reversed(self._loops):
            loop.stop()


class StageShell(ActorShell):
    """Base of the stage actors: the runner's loop, plus the actor's other loops."""

    state = JobState.RECEIVING

    def _start(self, runtime: StageRuntime, work: Callable[[Job], None]) -> None:
        self._runner = StageRunner(self.name, self.state, runtime, self._ledger, work, self._clock)
        self._loops.append(self._runner.loop)
        self._runner.start()
        self._start_heartbeat()

    def _beat(self) -> int:
        self._runner.renew()
        return super()._beat()

    def _counters(self) -> tuple[int, int, int, str]:
        r = self._runner
        return r.processed, r.failures, r.in_flight, r.last_error

    def stop(self) -> None:
        """Stop the other loops, then the runner (leases of unstarted work go back)."""
        heartbeat = getattr(self, "_heartbeat", None)
        if heartbeat is not None:
            heartbeat.stop()
        for loop in reversed(self._loops):
            if loop is not self._runner.loop:
                loop.stop()
        self._runner.stop()
