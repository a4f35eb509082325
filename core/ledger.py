"""The job state machine, the retry policy, and the typed effects of a transition (pure).

``receiving -> complete -> validated | quarantined -> routed | skipped -> linked -> inferred ->
written -> delivered``; ``dead`` is reachable from every working state and a dead job can be
replayed into the state it died in. "retry(after)" is not a state: a failed job keeps its state
and gets ``not_before`` in the future.

A stage moves a job on with ``Jobs.transition(job, state, ..., effects=[...])`` (``state.ledger``):
the effects below are what else commits in the same transaction, as values. The ledger package
turns each into SQL; no SQL crosses its boundary.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.config import RetryConfig
from core.results import OutboxItem, SrVersion
from core.review import FlagKind
from core.types import InstanceState, JobState, ValidationIssue
from core.versions import VersionState

__all__ = [
    "CoverStudy",
    "Effect",
    "HoldInQuarantine",
    "MarkSrVersions",
    "NEXT_STATES",
    "Override",
    "QueueOutbox",
    "RaiseReviewFlag",
    "RecordResult",
    "RecordSrVersions",
    "RetryPolicy",
    "SetAside",
    "WORKING_STATES",
    "WithdrawOutbox",
    "can_transition",
    "instance_state",
]


class RecordResult(enum.StrEnum):
    """Outcome of recording a received instance."""

    NEW = "new"
    """First time we see this SOP Instance UID: stored and attached to its study's job."""
    DUPLICATE = "duplicate"
    """Already held: acknowledged and audited, not processed again."""


class Override(enum.StrEnum):
    """Why one instance is set aside while the rest of its study goes on."""

    QUARANTINED = "quarantined"
    """It failed validation (``quarantine`` has the reasons)."""
    SKIPPED = "skipped"
    """No rule routed it, AI is off for it, or it is a prior we retrieved."""
    DISCARDED = "discarded"
    """An operator discarded it from quarantine: no job includes it, ever."""


@dataclass(frozen=True, slots=True)
class SetAside:
    """Set some of the job's instances aside, each with its reason."""

    override: Override
    reasons: tuple[tuple[str, str], ...]
    """``(sop_instance_uid, reason)``."""


@dataclass(frozen=True, slots=True)
class CoverStudy:
    """The job (now complete) covers every instance of its study not discarded; every
    instance is decided afresh for it (earlier quarantine / skip marks are cleared)."""


@dataclass(frozen=True, slots=True)
class HoldInQuarantine:
    """Hold one instance in quarantine with its validation issues (``core.quarantine``)."""

    sop_instance_uid: str
    issues: tuple[ValidationIssue, ...]


@dataclass(frozen=True, slots=True)
class QueueOutbox:
    """Put result objects (already durable files) in the outbox for delivery."""

    items: tuple[OutboxItem, ...]


@dataclass(frozen=True, slots=True)
class RecordSrVersions:
    """Record SR versions we wrote (predecessors, priors, our own series at the PACS)."""

    versions: tuple[SrVersion, ...]


@dataclass(frozen=True, slots=True)
class RaiseReviewFlag:
    """Something a person must look at (once per kind and study pair; ``core.review``)."""

    kind: FlagKind
    study_uid: str
    other_study_uid: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)
    subject: str = ""
    """Tells flags of one kind and study apart where there is no other study."""


@dataclass(frozen=True, slots=True)
class MarkSrVersions:
    """Set the delivery state of SR versions of one study and family (``core.versions``)."""

    study_uid: str
    family: str
    versions: tuple[int, ...]
    """Job versions whose SR changes state."""
    state: VersionState


@dataclass(frozen=True, slots=True)
class WithdrawOutbox:
    """Mark the job's pending outbox items of one family superseded: never sent."""

    family: str


Effect = (
    SetAside
    | CoverStudy
    | HoldInQuarantine
    | QueueOutbox
    | RecordSrVersions
    | RaiseReviewFlag
    | MarkSrVersions
    | WithdrawOutbox
)
"""What may commit together with a job's transition."""

NEXT_STATES: dict[JobState, frozenset[JobState]] = {
    JobState.RECEIVING: frozenset({JobState.COMPLETE}),
    JobState.COMPLETE: frozenset({JobState.VALIDATED, JobState.QUARANTINED}),
    JobState.VALIDATED: frozenset({JobState.ROUTED, JobState.SKIPPED}),
    JobState.ROUTED: frozenset({JobState.LINKED, JobState.SKIPPED}),
    JobState.LINKED: frozenset({JobState.INFERRED, JobState.SKIPPED, JobState.QUARANTINED}),  # undecodable
    JobState.INFERRED: frozenset({JobState.WRITTEN, JobState.SKIPPED}),  # superseded, unwritten
    JobState.WRITTEN: frozenset({JobState.DELIVERED, JobState.SKIPPED}),  # superseded, unsent
    JobState.QUARANTINED: frozenset({JobState.COMPLETE}),  # operator release re-runs it
    JobState.SKIPPED: frozenset(),
    JobState.DELIVERED: frozenset(),
    JobState.DEAD: frozenset(),  # replay restores the state it died in
}
"""Allowed forward transitions. ``dead`` is allowed from every working state."""

WORKING_STATES = frozenset(s for s in JobState if not s.is_terminal)
"""States some stage works on."""


def can_transition(current: JobState, new: JobState) -> bool:
    """Whether the ledger may move a job from ``current`` to ``new``.

    >>> can_transition(JobState.RECEIVING, JobState.COMPLETE)
    True
    >>> can_transition(JobState.RECEIVING, JobState.DELIVERED)
    False
    >>> can_transition(JobState.INFERRED, JobState.DEAD)
    True
    """
    if new is JobState.DEAD:
        return current in WORKING_STATES
    return new in NEXT_STATES[current]


def instance_state(job_state: JobState, instance_override: str | None) -> InstanceState:
    """What one instance's state is, given its job's state and its own override.

    Args:
        job_state: State of the latest job that covers the instance.
        instance_override: ``"quarantined"`` or ``"skipped"`` when the instance itself was
            set aside while the rest of its study went on; else ``None``.

    Returns:
        The user-visible state.
    """
    if instance_override:
        return InstanceState(instance_override)
    return {
        JobState.DELIVERED: InstanceState.REPORTED,
        JobState.SKIPPED: InstanceState.SKIPPED,
        JobState.QUARANTINED: InstanceState.QUARANTINED,
        JobState.DEAD: InstanceState.DEAD,
    }.get(job_state, InstanceState.PENDING)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with a dead-letter limit.

    Failures of the job itself (a model error, a PACS refusal) spend the retry budget. A peer
    that cannot be reached does not: the work waits (``unavailable_delay``) for as long as the
    outage lasts, visible in ``pacsai status`` as the oldest waiting job.
    """

    max_attempts: int
    base_delay_s: float
    multiplier: float
    max_delay_s: float
    unavailable_delay_s: float

    @classmethod
    def from_config(cls, cfg: RetryConfig) -> RetryPolicy:
        """Build the policy from its config slice."""
        return cls(
            cfg.max_attempts,
            cfg.base_delay_s,
            cfg.multiplier,
            cfg.max_delay_s,
            cfg.unavailable_delay_s,
        )

    def delay_after(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failure (1-based).

        >>> RetryPolicy(5, 1.0, 2.0, 10.0, 2.0).delay_after(1)
        1.0
        >>> RetryPolicy(5, 1.0, 2.0, 10.0, 2.0).delay_after(3)
        4.0
        >>> RetryPolicy(5, 1.0, 2.0, 10.0, 2.0).delay_after(9)
        10.0
        """
        exponent = max(0, attempts - 1)
        return min(self.max_delay_s, self.base_delay_s * self.multiplier**exponent)

    def is_exhausted(self, attempts: int) -> bool:
        """Whether ``attempts`` failures make the job dead."""
        return attempts >= self.max_attempts

    def unavailable_delay(self, consecutive: int) -> float:
        """Wait before re-trying an unreachable peer, growing gently up to ``max_delay_s``."""
        return min(self.max_delay_s, self.unavailable_delay_s * 1.5 ** max(0, consecutive - 1))
