"""Value types shared by every layer: frozen, slotted, cheap to pickle between actors."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "AuditEventType",
    "CodedTerm",
    "InstanceMeta",
    "InstanceState",
    "JobState",
    "Priority",
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
    PRIOR_ISSUER_MISMATCH = "prior_issuer_mismatch"
    """A study shares the Patient ID but the PACS returned another Issuer of Patient ID: not
    linked, for review."""
    PRIOR_UNVERIFIED = "prior_unverified"
    """A study shares the Patient ID but its identity cannot be checked (name or birth date
    empty, issuer on one side only): not linked unless configured or confirmed, for review."""
    MPPS_RECEIVED = "mpps_received"
    """An MPPS N-CREATE or N-SET was accepted (PS3.4 F.7): the step's status is recorded."""
    IAN_RECEIVED = "ian_received"
    """An Instance Availability Notification (N-CREATE, PS3.4 R) was accepted and recorded."""
    EVIDENCE_REFUSED = "evidence_refused"
    """An MPPS or IAN request was refused; the DIMSE status and Error Comment are recorded."""
    SENDER_TIGHTENED = "sender_tightened"
    """A sender completed a study too early (an instance followed soon after a heuristic
    completion) and its completion rule was made stricter."""
    INFERRED = "inferred"
    """A model produced a prediction."""
    INFERENCE_FAILED = "inference_failed"
    """A model could not produce a prediction for a job."""
    SR_BUILT = "sr_built"
    """A result object was built and put in the outbox."""
    SR_DELIVERED = "sr_delivered"
    """The PACS answered success for a result object."""
    SR_VERSION_SUPERSEDED = "sr_version_superseded"
    """A newer SR version of the study and model replaced one not yet sent: it is never sent."""
    SR_VERSION_CAP_REACHED = "sr_version_cap_reached"
    """A study and model reached ``sr.max_versions``: a newer version is held for an operator."""
    DELIVERY_FAILED = "delivery_failed"
    """The PACS refused a result object or could not be reached."""
    JOB_RETRY = "job_retry"
    """A stage failed for a job; it will be retried after a delay."""
    JOB_DEAD = "job_dead"
    """A job exhausted its retries."""
    JOB_REPLAYED = "job_replayed"
    """An operator replayed a dead job."""
    LEASE_TAKEN_BACK = "lease_taken_back"
    """A lease held by a dead holder (an earlier run, or a stage actor's process before Ray
    restarted it) was taken back at start, before it expired (``core.leases``)."""
    REVIEW_FLAG_RESOLVED = "review_flag_resolved"
    """A reviewer resolved a review flag: who, how and why."""
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
    EHR_REPORT_REPLAYED = "ehr_report_replayed"
    """An operator put a dead DiagnosticReport back in the EHR outbox with a fresh retry budget."""
    API_REQUEST = "api_request"
    """An HTTP request to the API: who (the subject, never the token), what, and its status."""
    API_TOKEN_CREATED = "api_token_created"
    """An API token was issued: its id, subject, scopes and expiry (never the secret)."""
    API_TOKEN_REVOKED = "api_token_revoked"
    """An API token was revoked."""
    MODEL_PROMOTED = "model_promoted"
    """An operator made a model version live: the family, the version, the one it replaced, why."""
    MODEL_ROLLED_BACK = "model_rolled_back"
    """An operator rolled a family back to a version: the versions rolled back from are halted."""
    ASSOCIATION_REFUSED = "association_refused"
    """A DICOM association was refused (A-ASSOCIATE-RJ): calling AE title not allowed or not
    bound to the peer's certificate subject, called AE title wrong (issue 13)."""
    HL7_PEER_REFUSED = "hl7_peer_refused"
    """An HL7 peer was refused: its connection closed as it opened (no ``hl7.senders`` entry
    names its address or certificate subject), or its message answered AR (MSH-3..6 not one of
    the peer's entries)."""
    DATA_PURGED = "data_purged"
    """Retention purged stored data past its retention (``core.retention``): counts per store."""
    DATA_KEYS_ROTATED = "data_keys_rotated"
    """The data keys were rotated (``pacsai keys rotate``): the new key's id, what was re-sealed,
    or which retired keys were dropped (ids only; never key material)."""
    RESEARCH_EXPORTED = "research_exported"
    """A study's instances were exported de-identified (``pacsai export deid``): project and
    counts, never the pseudonyms (the audit trail must not hold the key to them)."""
    ALERT_POLICY_CHANGED = "alert_policy_changed"
    """The alert policy (``clinical.policy_file``) was loaded with changes: its digest and what
    changed (``core.alert_policy.policy_changes``; role names and rule fields, no patient data)."""
    ALERT_POLICY_REJECTED = "alert_policy_rejected"
    """A changed alert policy file failed validation and was not taken: the one in force stays."""
    RESULT_VIEWED = "result_viewed"
    """A reader opened an AI result (or its heatmap) on the review page or through the API."""
    FINDING_REVIEWED = "finding_reviewed"
    """A reader decided on an AI finding: the AI SR and its version, the finding, agree /
    disagree / override, the final determination, whether the heatmap was viewed."""
    VERIFIED_SR_DELIVERED = "verified_sr_delivered"
    """A reader's verified SR (Verification Flag VERIFIED) was stored in the PACS."""
    ALERT_PUSHED = "alert_pushed"
    """A critical finding was delivered to a role's paging webhook (or given up on)."""
    AGREEMENT_BELOW_FLOOR = "agreement_below_floor"
    """A model version's monthly agreement rate with its readers fell below
    ``clinical.agreement_floor`` (``core.success_metrics.agreement_alerts``)."""
    METRICS_EXPORTED = "metrics_exported"
    """The success measures were exported (``pacsai metrics export``): months and row counts."""


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
class ValidationIssue:
    """One validation finding with a machine-readable code (see core.validation)."""

    code: str
    message: str
    sop_instance_uid: str = ""
    level: str = "instance"
    """``instance``, ``series`` or ``study``: what the finding is about (``core.reasons.Level``)."""
