"""What ``pacsai status`` reports: jobs, instances, queues, quarantine, stage health."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from core.health import ActorHealth, HealthStatus

__all__ = ["LedgerGauges", "LedgerStatus", "QuarantineCounts", "StageRecord", "WaitingJob"]


@dataclass(frozen=True, slots=True)
class WaitingJob:
    """The oldest job still being worked on, and why it waits."""

    job_id: int
    study_uid: str
    state: str
    age_s: float
    reason: str


@dataclass(frozen=True, slots=True)
class QuarantineCounts:
    """Quarantine entries per state, and the held ones per reason code."""

    held: int
    released: int
    discarded: int
    held_by_code: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class StageRecord:
    """An actor's last recorded health.

    Attributes:
        health: What it reported (or that it did not answer).
        heartbeat_at: When that was recorded.
        status: OK, failing or down, as recorded.
    """

    health: ActorHealth
    heartbeat_at: float
    status: HealthStatus


@dataclass(frozen=True, slots=True)
class LedgerStatus:
    """The whole report.

    Attributes:
        jobs: Jobs per state (every state listed).
        instances: Received instances per user-visible state.
        queue_depth: Jobs in working states.
        oldest_waiting: The oldest of those.
        outbox_pending: Result objects not yet delivered.
        quarantine: Quarantine counts.
        review_flags_open: Review flags not resolved.
        stages: Each actor's last recorded health.
        review_flags_by_kind: Open review flags per kind (``pacsai review list``).
        sr_versions_held: SR versions held at ``sr.max_versions``, waiting for an operator.
        senders_tightened: Senders whose completion rule was tightened: AE title -> strictness.
    """

    jobs: Mapping[str, int]
    instances: Mapping[str, int]
    queue_depth: int
    oldest_waiting: WaitingJob | None
    outbox_pending: int
    quarantine: QuarantineCounts
    review_flags_open: int
    stages: tuple[StageRecord, ...]
    review_flags_by_kind: Mapping[str, int] = field(default_factory=dict)
    sr_versions_held: int = 0
    senders_tightened: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LedgerGauges:
    """The ledger's numbers that the metrics publish (``core.metrics``), read in one pass.

    Attributes:
        jobs: Jobs per state (every state listed).
        waiting: Per working state, jobs due and not leased (a stage's queue).
        oldest_waiting_s: Per working state, how long its oldest unleased job has waited there
            (0 when none).
        outbox_pending: Result objects not yet delivered.
        quarantine_held: Held quarantine entries per reason code.
    """

    jobs: Mapping[str, int]
    waiting: Mapping[str, int]
    oldest_waiting_s: Mapping[str, float]
    outbox_pending: int
    quarantine_held: Mapping[str, int]
