"""Value types shared by every layer: frozen, slotted, cheap to pickle between actors."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "AuditEventType",
    "CodedTerm",
    "Finding",
    "InferenceRequest",
    "InstanceMeta",
    "InstanceState",
    "Job",
    "JobState",
    "ModelTask",
    "Prediction",
    "Priority",
    "RouteDecision",
    "ValidationIssue",
]


class JobState(enum.StrEnum):
    """States of a study job in the ledger (DESIGN.md, "Ledger state machine")."""

    RECEIVING = "receiving"
    """Instances are arriving; the study is not yet known to be complete."""
    COMPLETE = "complete"
    """The study is complete (quiet period passed, or the PACS said so)."""
    VALIDATED = "validated"
    """Every instance that goes on passed validation."""
    QUARANTINED = "quarantined"
    """Terminal: nothing in the job may be processed; reasons are recorded."""
    ROUTED = "routed"
    """At least one model family will run on (part of) the study."""
    SKIPPED = "skipped"
    """Terminal: no rule matched, or AI is switched off; the reason is recorded."""
    LINKED = "linked"
    """Prior studies were looked up (or their absence recorded)."""
    INFERRED = "inferred"
    """Every model task returned a prediction."""
    WRITTEN = "written"
    """Result objects are in the durable outbox."""
    DELIVERED = "delivered"
    """Terminal: the PACS answered success for every result object."""
    DEAD = "dead"
    """Terminal until replayed: retries are exhausted."""

    @property
    def is_terminal(self) -> bool:
        """Whether no stage works on this state."""
        return self in _TERMINAL


_TERMINAL = frozenset({JobState.QUARANTINED, JobState.SKIPPED, JobState.DELIVERED, JobState.DEAD})


class InstanceState(enum.StrEnum):
    """What a user sees for one received instance (DESIGN.md, "Every accepted instance")."""

    PENDING = "pending"
    """Still being worked on."""
    REPORTED = "reported"
    """An SR that covers it reached the PACS."""
    SKIPPED = "skipped"
    """No rule matched, or AI was off for its study or modality."""
    QUARANTINED = "quarantined"
    """It failed validation; reason codes are recorded."""
    DEAD = "dead"
    """Retries were exhausted for its job; it can be replayed."""
    DISCARDED = "discarded"
    """An operator discarded it from quarantine, with a reason; no job will ever process it."""


class Priority(enum.IntEnum):
    """Scheduling lane; stages take higher values first."""

    ROUTINE = 0
    """Ordinary work."""
    URGENT = 5
    """Emergency department or urgent orders."""
    STAT = 10
    """STAT orders and critical routing rules."""


class AuditEventType(enum.StrEnum):
    """Kinds of audit events; every pipeline step appends one."""

    INSTANCE_RECEIVED = "instance_received"
    """A C-STORE was made durable and acknowledged."""
    INSTANCE_DUPLICATE = "instance_duplicate"
    """A SOP Instance UID we already hold was sent again (acknowledged, not reprocessed)."""
    INSTANCE_REJECTED = "instance_rejected"
    """Received data could not be accepted; a failure status was returned."""
    STUDY_COMPLETE = "study_complete"
    """The assembler declared a study complete."""
    VALIDATED = "validated"
    """The validator passed a job (possibly after quarantining some instances)."""
    QUARANTINED = "quarantined"
    """An instance or a whole job failed validation."""
    ROUTED = "routed"
    """The router chose model families for a job."""
    SKIPPED = "skipped"
    """The router skipped a job or some of its instances."""
    LINKED = "linked"
    """The prior linker finished for a job."""
    PRIOR_QUERY = "prior_query"
    """The PACS was asked for a patient's prior studies (C-FIND; PS3.15 A.5.3.8 Query)."""
    PRIOR_RETRIEVED = "prior_retrieved"
    """A prior series was retrieved from the PACS (C-MOVE / C-GET; Instances Transferred)."""
    PRIOR_IDENTITY_CONFLICT = "prior_identity_conflict"
    """A study shares the Patient ID but not the name or birth date: not linked, for review."""
    INFERRED = "inferred"
    """A model produced a prediction."""
    INFERENCE_FAILED = "inference_failed"
    """A model could not produce a prediction for a job."""
    SR_BUILT = "sr_built"
    """A result object was built and put in the outbox."""
    SR_DELIVERED = "sr_delivered"
    """The PACS answered success for a result object."""
    DELIVERY_FAILED = "delivery_failed"
    """The PACS refused a result object or could not be reached."""
    JOB_RETRY = "job_retry"
    """A stage failed for a job; it will be retried after a delay."""
    JOB_DEAD = "job_dead"
    """A job exhausted its retries."""
    JOB_REPLAYED = "job_replayed"
    """An operator replayed a dead job."""
    AI_SWITCH_CHANGED = "ai_switch_changed"
    """AI was switched on or off for a study or a modality."""
    QUARANTINE_RELEASED = "quarantine_released"
    """An operator released quarantined data back into the pipeline."""
    QUARANTINE_DISCARDED = "quarantine_discarded"
    """An operator discarded quarantined data, with a reason."""
    HL7_RECEIVED = "hl7_received"
    """An HL7 v2 message was made durable and acknowledged (AA, or AE when it broke a rule)."""
    HL7_REJECTED = "hl7_rejected"
    """Bytes on the MLLP link could not be taken as an HL7 message (ACK AR)."""
    CONTEXT_READ = "context_read"
    """Patient context (PHI from the HL7 bridge) was read, by whom and for what purpose."""
    EHR_REPORT_QUEUED = "ehr_report_queued"
    """A FHIR DiagnosticReport for a delivered SR was put in the durable EHR outbox."""
    EHR_REPORT_DELIVERED = "ehr_report_delivered"
    """The FHIR endpoint accepted a DiagnosticReport."""
    EHR_REPORT_FAILED = "ehr_report_failed"
    """The FHIR endpoint refused a DiagnosticReport (retried, or dead when retries ran out)."""


@dataclass(frozen=True, slots=True)
class CodedTerm:
    """A coded concept (DICOM Code Sequence item): value, scheme designator, meaning."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True, slots=True)
class InstanceMeta:
    """What the ledger records about one received instance. No patient names or IDs."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    transfer_syntax_uid: str
    path: str
    sha256: str
    size: int
    received_at: float
    calling_ae: str = ""
    body_part: str = ""
    series_description: str = ""
    patient_key: str = ""
    """A keyed hash of the patient identifier, for grouping without storing the identifier."""
    accession_key: str = ""
    """A keyed hash of the Accession Number (0008,0050): joins HL7 order context without PHI."""


@dataclass(frozen=True, slots=True)
class ModelTask:
    """One model family to run on a set of instances of a study."""

    family: str
    sop_instance_uids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The router's answer for one job.

    Attributes:
        tasks: Model runs to do; empty means the job is skipped.
        skipped: ``(sop_instance_uid, reason)`` for instances no task covers.
        reason: Why, in words, for the audit trail and ``pacsai status``.
        priority: Priority floor from the matched rules.
    """

    tasks: tuple[ModelTask, ...]
    skipped: tuple[tuple[str, str], ...]
    reason: str
    priority: int = 0


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """What the inference stage sends to a model deployment.

    The DICOM files travel as bytes (exactly as spooled), so a replica on another node of a Ray
    cluster needs no shared disk; decoding and preprocessing happen in the replica.

    Attributes:
        study_uid: Study Instance UID.
        family: Model family key.
        instances: ``(sop_instance_uid, dicom_file_bytes)`` of every instance of the task.
        job_id: Ledger job, for logs.
    """

    study_uid: str
    family: str
    instances: tuple[tuple[str, bytes], ...]
    job_id: int = 0


@dataclass(frozen=True, slots=True)
class ValidationIssue:
    """One validation finding with a machine-readable code (see core.validation)."""

    code: str
    message: str
    sop_instance_uid: str = ""
    level: str = "instance"
    """``instance``, ``series`` or ``study``: what the finding is about (``core.reasons.Level``)."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One model output for one finding of a study."""

    key: str
    term: CodedTerm
    probability: float
    threshold: float
    critical: bool = False
    size_mm: float | None = None
    """The finding's measured size (longest diameter), where the model measures one."""

    @property
    def present(self) -> bool:
        """Whether the probability reaches the finding's threshold."""
        return self.probability >= self.threshold


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a model deployment returns for one task."""

    family: str
    model_name: str
    model_version: str
    findings: tuple[Finding, ...]
    source_uids: tuple[str, ...]
    demo: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (for the ledger)."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Prediction:
        """Rebuild a prediction stored by :meth:`to_json`."""
        findings = tuple(
            Finding(
                key=f["key"],
                term=CodedTerm(**f["term"]),
                probability=float(f["probability"]),
                threshold=float(f["threshold"]),
                critical=bool(f.get("critical", False)),
                size_mm=None if f.get("size_mm") is None else float(f["size_mm"]),
            )
            for f in raw["findings"]
        )
        return cls(
            family=raw["family"],
            model_name=raw["model_name"],
            model_version=raw["model_version"],
            findings=findings,
            source_uids=tuple(raw["source_uids"]),
            demo=bool(raw.get("demo", False)),
            extra=dict(raw.get("extra", {})),
        )


@dataclass(frozen=True, slots=True)
class Job:
    """A study job as stored in the ledger."""

    job_id: int
    study_instance_uid: str
    version: int
    state: JobState
    priority: int
    attempts: int
    not_before: float
    created_at: float
    updated_at: float
    last_instance_at: float
    reason: str = ""
    lease_owner: str = ""
    leased_until: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)
