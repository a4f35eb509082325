"""Health as it is, not as hoped: whether each loop's thread runs and when it last did work.

Every background loop (a stage's lease loop, the evidence watcher, the pre-validator, the
auditor, the EHR sender, a listener's server thread) reports a ``LoopHealth``; an actor reports
its loops together as an ``ActorHealth``, which the supervisor records in the ledger. An actor
is alive only if every one of its loops is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["ActorHealth", "HealthStatus", "LoopHealth"]


class HealthStatus(enum.StrEnum):
    """What ``pacsai status`` shows for an actor."""

    OK = "ok"
    """Every loop's thread runs; the last round did not fail."""
    FAILING = "failing"
    """Every thread runs, but the latest round failed (e.g. the PACS or the ledger is down)."""
    DOWN = "down"
    """A loop's thread ended, or the actor does not answer."""


@dataclass(frozen=True, slots=True)
class LoopHealth:
    """One background loop.

    Attributes:
        name: The loop (``stage:router``, ``evidence-watcher``, ``dicom-server``...).
        alive: Whether its thread is running.
        rounds: Rounds finished (done or failed).
        failures: Rounds that raised.
        last_round_at: When the last round finished (0: none yet).
        last_work_at: When a round last handled something (0: never).
        last_error: The latest round's failure, or empty once a round succeeds again.
    """

    name: str
    alive: bool
    rounds: int = 0
    failures: int = 0
    last_round_at: float = 0.0
    last_work_at: float = 0.0
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class ActorHealth:
    """One actor: its counters and its loops.

    Attributes:
        actor: Its name (``router``, ``listener``...).
        pid: Its process.
        processed: Work items it finished.
        failures: Work items that failed.
        in_flight: Work items in progress.
        last_error: The latest failure, if any.
        loops: Its background loops.
    """

    actor: str
    pid: int
    processed: int = 0
    failures: int = 0
    in_flight: int = 0
    last_error: str = ""
    loops: tuple[LoopHealth, ...] = ()

    @property
    def alive(self) -> bool:
        """Whether every loop's thread runs (an actor without loops is alive if it answers)."""
        return all(loop.alive for loop in self.loops)

    @property
    def last_work_at(self) -> float:
        """When any of its loops last handled something."""
        return max((loop.last_work_at for loop in self.loops), default=0.0)

    @property
    def status(self) -> HealthStatus:
        """OK, failing (threads run, the last round failed) or down."""
        if not self.alive:
            return HealthStatus.DOWN
        return HealthStatus.FAILING if any(loop.last_error for loop in self.loops) else HealthStatus.OK

    @classmethod
    def unreachable(cls, actor: str, error: str) -> ActorHealth:
        """An actor that did not answer its health check."""
        return cls(actor, 0, last_error=error, loops=(LoopHealth(actor, False, last_error=error),))
