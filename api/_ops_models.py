"""Request and response bodies of the operations routes (``api.ops``), as the OpenAPI schema shows them.

Each response model mirrors a value of the service layer (``api.operations``) field by field;
``StatusOut`` mirrors ``pacsai status --json`` exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from api.operations import REASON_MAX, JobDetail
from core.audit import AuditEntry
from core.config import ModelCard, TrafficConfig
from core.health import HealthStatus
from core.quarantine import QuarantineEntry, QuarantineState
from core.rollout import HaltCause, ModelCardReport, RolloutState
from core.types import JobState
from state.ledger.jobs import JobSummary

__all__ = [
    "AiSwitchOut",
    "AiSwitchRequest",
    "AuditEventOut",
    "AuditPage",
    "AuditVerdict",
    "DecisionRequest",
    "HaltOut",
    "JobDetailOut",
    "JobOut",
    "JobPage",
    "ModelApp",
    "ModelApps",
    "ModelCardOut",
    "ModelChange",
    "QuarantineEntries",
    "QuarantineEntryOut",
    "REASON_PATTERN",
    "ReplayOut",
    "RolloutOut",
    "RolloutRequest",
    "StatusOut",
]


REASON_PATTERN = r"^[^\x00-\x08\x0b-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x08\x0b-\x1f\x7f]*$"
"""A reason: something besides white space, and no control characters (tab and newline pass)."""
_OPTIONAL_REASON = r"^[^\x00-\x08\x0b-\x1f\x7f]*$"


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# ------------------------------------------------------------------------ status
class LoopOut(_Out):
    """One background loop of an actor."""

    name: str
    alive: bool
    rounds: int
    failures: int
    last_round_at: float
    last_work_at: float
    last_error: str


class ActorHealthOut(_Out):
    """What an actor last reported."""

    actor: str
    pid: int
    processed: int
    failures: int
    in_flight: int
    last_error: str
    loops: list[LoopOut]


class StageOut(_Out):
    """An actor's last recorded health."""

    health: ActorHealthOut
    heartbeat_at: float = Field(description="When it was recorded (epoch seconds)")
    status: HealthStatus


class WaitingOut(_Out):
    """The oldest job still being worked on."""

    job_id: int
    study_uid: str
    state: str
    age_s: float
    reason: str


class QuarantineCountsOut(_Out):
    """Quarantine entries per state; held ones per reason code."""

    held: int
    released: int
    discarded: int
    held_by_code: dict[str, int]


class StatusOut(_Out):
    """The whole status report (``pacsai status --json``)."""

    jobs: dict[str, int] = Field(description="Jobs per state (every state listed)")
    instances: dict[str, int] = Field(description="Received instances per user-visible state")
    queue_depth: int = Field(description="Jobs in working states")
    oldest_waiting: WaitingOut | None
    outbox_pending: int = Field(description="Result objects not yet delivered")
    quarantine: QuarantineCountsOut
    review_flags_open: int
    stages: list[StageOut]
    review_flags_by_kind: dict[str, int]
    sr_versions_held: int
    senders_tightened: dict[str, int] = Field(description="Sender AE title -> strictness")


# -------------------------------------------------------------------------- jobs
class JobOut(_Out):
    """A job as listed (without its record)."""

    job_id: int
    study_uid: str
    version: int = Field(description="1 for a study's first job; a late instance or a release opens the next")
    state: JobState
    priority: int
    attempts: int = Field(description="Failures that spent the retry budget")
    not_before: float
    created_at: float
    updated_at: float
    last_instance_at: float
    reason: str = Field(description="Why it waits, was skipped or died")
    lease_owner: str = Field(description="The worker holding it (empty: none)")
    leased_until: float
    dead_from: JobState | None = Field(description="The state a dead job died in (where a replay puts it)")


class JobPage(BaseModel):
    """One page of jobs, newest first."""

    items: list[JobOut]
    next_before: int | None = Field(description="Pass as `before` for the next page; null: this was the last")

    @classmethod
    def of(cls, jobs: Sequence[JobSummary], limit: int) -> JobPage:
        """The page of ``jobs`` asked for with ``limit``."""
        items = [JobOut.model_validate(j) for j in jobs]
        return cls(items=items, next_before=items[-1].job_id if len(items) == limit else None)


class AuditEventOut(_Out):
    """One event of the hash-chained audit trail."""

    seq: int = Field(description="Its place in the chain")
    at: float
    type: str
    actor: str = Field(description="Who: a stage, user:<name>, token:<name> or oidc:<sub>")
    study_uid: str
    sop_instance_uid: str
    job_id: int | None
    detail: dict[str, Any]


class JobDetailOut(BaseModel):
    """One job and its history (the audit events that name it, oldest first)."""

    job: JobOut
    history: list[AuditEventOut]

    @classmethod
    def of(cls, detail: JobDetail) -> JobDetailOut:
        """The body of ``detail``."""
        return cls(
            job=JobOut.model_validate(detail.job), history=[AuditEventOut.model_validate(e) for e in detail.history]
        )


class ReplayOut(BaseModel):
    """A replayed job and the state it is in now."""

    job_id: int
    state: JobState


# -------------------------------------------------------------------- quarantine
class IssueOut(_Out):
    """One reason an instance is held."""

    code: str
    message: str = Field(description="Names the attribute: what was received, what was expected")
    sop_instance_uid: str
    level: str = Field(description="instance, series or study")


class QuarantineEntryOut(_Out):
    """One quarantined instance (the file stays in the spool as sent; its path is not shown)."""

    id: str = Field(description="Q<n>")
    qid: int
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    job_id: int | None
    state: QuarantineState
    codes: list[str]
    reasons: list[IssueOut]
    accepted_codes: list[str] = Field(description="Codes an operator accepted on release")
    created_at: float
    updated_at: float
    decided_by: str
    decided_at: float | None
    decision_reason: str
    modality: str
    sop_class_uid: str
    transfer_syntax: str
    sha256: str
    size: int
    calling_ae: str
    received_at: float | None


class QuarantineEntries(BaseModel):
    """Quarantine entries."""

    items: list[QuarantineEntryOut]

    @classmethod
    def of(cls, entries: Sequence[QuarantineEntry]) -> QuarantineEntries:
        """The body of ``entries``."""
        return cls(items=[QuarantineEntryOut.model_validate(e) for e in entries])


class DecisionRequest(BaseModel):
    """Why an operator releases or discards (audited)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        min_length=1, max_length=REASON_MAX, pattern=REASON_PATTERN, description="Why (required, not blank; audited)"
    )


# ------------------------------------------------------------------- AI switches
class AiSwitchRequest(BaseModel):
    """Switch AI on or off."""

    model_config = ConfigDict(extra="forbid")

    enabled: StrictBool = Field(description="true: AI runs; false: it is skipped, with this reason")
    reason: str = Field(default="", max_length=REASON_MAX, pattern=_OPTIONAL_REASON, description="Why (audited)")


class AiSwitchOut(_Out):
    """An AI switch as set."""

    scope: str = Field(description="study or modality")
    key: str = Field(description="Study Instance UID, or modality (upper case)")
    enabled: bool
    reason: str
    actor: str = Field(description="Who set it")
    at: float = Field(description="When (epoch seconds)")


# ------------------------------------------------------------------------ models
class ModelApp(BaseModel):
    """A model family's Serve application."""

    name: str = Field(description="model-<family>")
    status: str = Field(description="Ray Serve's application status (RUNNING, DEPLOYING...)")


class ModelApps(BaseModel):
    """The deployed model applications."""

    items: list[ModelApp]

    @classmethod
    def of(cls, apps: Mapping[str, str]) -> ModelApps:
        """The body of ``{name: status}``."""
        return cls(items=[ModelApp(name=n, status=s) for n, s in sorted(apps.items())])


class ModelChange(BaseModel):
    """The applications a deploy or removal changed."""

    family: str
    applications: list[str]


# ---------------------------------------------------------------- model versions
class RolloutRequest(BaseModel):
    """Why an operator promotes or rolls back (optional; audited)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=REASON_MAX, pattern=_OPTIONAL_REASON, description="Why (audited)")


class LiveSettingOut(_Out):
    """The live version as an operator last set it."""

    version: str
    actor: str = Field(description="Who promoted or rolled back")
    at: float = Field(description="When (epoch seconds)")
    reason: str


class HaltOut(_Out):
    """A halted version: it gets no studies until made live again."""

    version: str
    cause: HaltCause = Field(description="rolled_back, or superseded by a promotion")
    actor: str
    at: float
    reason: str


class RolloutOut(BaseModel):
    """A family's rollout state after a promote or a rollback."""

    family: str
    live: LiveSettingOut | None = Field(description="The live version as set (null: never set)")
    halted: list[HaltOut]

    @classmethod
    def of(cls, state: RolloutState) -> RolloutOut:
        """The body of ``state``."""
        live = None if state.live is None else LiveSettingOut.model_validate(state.live)
        return cls(family=state.family, live=live, halted=[HaltOut.model_validate(h) for h in state.halted])


class FindingAgreementOut(_Out):
    """One finding of a shadow version against the live one."""

    key: str
    n: int
    agreement_rate: float = Field(description="Share of studies where both said present, or both absent")
    mean_abs_delta: float = Field(description="Mean absolute probability difference")


class ShadowSummaryOut(_Out):
    """A shadow version against the live one, over the studies it ran on."""

    n: int = Field(description="Studies compared")
    findings: list[FindingAgreementOut]
    agreement_rate: float | None
    mean_abs_delta: float | None
    live_versions: list[str] = Field(description="The versions it was compared against")


class ObservedOut(_Out):
    """What this site observed of a version."""

    studies: int = Field(description="Studies with a result of this version")
    results: int
    positive_rate: float | None = Field(description="Share of results with a finding present (null: none)")
    positive_rate_by_finding: dict[str, float]
    shadow: ShadowSummaryOut | None = Field(description="Agreement with the live version in shadow (null: never)")
    reader_agreement: float | None = Field(description="Agreement with readers (null: not available)")
    reader_agreement_note: str


class VersionCardOut(_Out):
    """One version of a family on its model card."""

    version: str
    name: str
    application: str = Field(description="Its Serve application")
    own: bool = Field(description="The family entry's own version (live unless another was promoted)")
    live: bool
    traffic: TrafficConfig = Field(description="What its config gives it while not live")
    traffic_now: str = Field(description="What studies it gets now, in words")
    halted: HaltOut | None
    deployed: bool | None = Field(description="Whether its application is deployed (null: Ray not reachable)")
    card: ModelCard = Field(description="What its publisher declares")
    observed: ObservedOut


class ModelCardOut(_Out):
    """A model family's card: each version, which one is live and who made it so."""

    family: str
    live: str = Field(description="The live version")
    live_set: LiveSettingOut | None = Field(description="The promote or rollback that made it live (null: config)")
    versions: list[VersionCardOut]

    @classmethod
    def of(cls, card: ModelCardReport) -> ModelCardOut:
        """The body of ``card``."""
        return cls.model_validate(card)


# ------------------------------------------------------------------------- audit
class AuditPage(BaseModel):
    """One page of audit events, oldest first."""

    items: list[AuditEventOut]
    next_after: int | None = Field(description="Pass as `after` for the next page; null: this was the last")

    @classmethod
    def of(cls, events: Sequence[AuditEntry], limit: int) -> AuditPage:
        """The page of ``events`` asked for with ``limit``."""
        items = [AuditEventOut.model_validate(e) for e in events]
        return cls(items=items, next_after=items[-1].seq if len(items) == limit else None)


class AuditVerdict(BaseModel):
    """Whether the audit hash chain is intact."""

    intact: bool
    broken_at_seq: int | None = Field(description="The first event that does not verify; null when intact")
    reason: str = Field(description="Why it does not verify; empty when intact")
