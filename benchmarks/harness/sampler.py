"""A thread that samples, once a second during a run, each stage's queue and each model's replicas.

Queue depth per stage is the number of jobs in the state that stage leases (``jobs`` of
``pacsai status``: ``complete`` waits for the validator, ``validated`` for the router, and so
on); replicas are the RUNNING replicas of each model family's Serve application.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.types import JobState

__all__ = ["Sample", "Sampler", "serve_replicas"]

logger = logging.getLogger(__name__)

WORKING = tuple(s.value for s in JobState if not s.is_terminal)
"""The states a stage still works on: one queue each."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample: when, jobs per state, and running replicas per model family."""

    at: float
    jobs: dict[str, int]
    replicas: dict[str, int]

    @property
    def queue_depth(self) -> int:
        """Jobs in working states."""
        return sum(self.jobs.get(s, 0) for s in WORKING)

    @property
    def finished(self) -> int:
        """Jobs in terminal states."""
        return sum(n for s, n in self.jobs.items() if s not in WORKING)


def serve_replicas() -> dict[str, int]:
    """RUNNING replicas of each model family's Serve application (this process must be in Ray)."""
    from ray import serve

    from core.config import app_name

    prefix = app_name("")
    out = {}
    for name, app in serve.status().applications.items():
        if name.startswith(prefix):
            out[name[len(prefix) :]] = sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())
    return out


@dataclass
class Sampler:
    """Samples ``jobs()`` and ``replicas()`` every ``interval_s`` on a daemon thread.

    Attributes:
        jobs: Returns jobs per state (``ledger.status.report(now).jobs``).
        replicas: Returns running replicas per family; failures are logged and recorded as {}.
        interval_s: Seconds between samples.
    """

    jobs: Callable[[], dict[str, int]]
    replicas: Callable[[], dict[str, int]] = dict
    interval_s: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> Sample:
        """Take one sample now and keep it."""
        try:
            replicas = self.replicas()
        except Exception as exc:  # noqa: BLE001  (a Serve hiccup must not end the benchmark)
            logger.warning("replica sample failed: %s", exc)
            replicas = {}
        sample = Sample(time.time(), dict(self.jobs()), replicas)
        self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> Sampler:
        """Take a first sample, then keep sampling on a thread."""
        self.sample()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        """Stop, take a last sample, and return them all."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.sample()
        return self.samples

    def as_rows(self) -> list[dict[str, Any]]:
        """The samples as JSON-ready rows."""
        return [{"at": s.at, "jobs": s.jobs, "replicas": s.replicas} for s in self.samples]
