"""A study job and the typed record its stages fill in, one section per stage.

``JobRecord`` replaces the untyped ``job.data`` dict: each stage reads the sections the ones
before it wrote and adds its own (``dataclasses.replace``), and the ledger stores it as JSON
(``core.codec``; large sections as blobs, ``state.ledger``). Nothing here holds a patient name
or identifier: the HL7 context is the PHI-free ``StudyContext``, and a prior study is named by
UID, date and what it is.

======================  ===============  ==========================================
section                 written by       read by
======================  ===============  ==========================================
``completion``          assembler        SR writer (partial flag), assembler (late
                                         arrivals of the next version)
``accepted``            validator        (audit, ``pacsai status``)
``route``               router           prior linker, inference, SR writer
``context``             router           SR writer (Referenced Request), EHR delivery
``priors``              prior linker     inference (retrieved prior), SR writer
``inference``           inference        SR writer, EHR delivery
======================  ===============  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.completeness import CompletionDecision
from core.context import StudyContext
from core.interval import PriorResult
from core.priors import Conflict, InstanceRef, PriorSearch, PriorStatus, SeriesRecord
from core.records import Prediction, Route
from core.sources import CompletedStudy, CompletionRule
from core.types import JobState, ValidationIssue
from core.versions import Incompleteness

__all__ = [
    "AcceptedIssues",
    "Completion",
    "Inference",
    "Job",
    "JobRecord",
    "PriorLink",
    "PriorStudy",
    "RetrievedSeries",
]


@dataclass(frozen=True, slots=True)
class AcceptedIssues:
    """Issues an operator accepted for one released instance (quarantine release)."""

    sop_instance_uid: str
    issues: tuple[ValidationIssue, ...]


@dataclass(frozen=True, slots=True)
class Completion:
    """How the assembler declared the job's study complete.

    Attributes:
        rule: The rule that completed it (``core.sources.CompletionRule``).
        at: When.
        calling_ae: The sender whose rule applied.
        evidence: The evidence that spoke (for ``max_wait``: what was waited on).
        incomplete: Set when the study is known to be partial (MPPS discontinued, instances
            listed but never arrived): its SRs carry the incomplete-series quality flag.
        reason: In words, for the audit trail.
    """

    rule: CompletionRule
    at: float
    calling_ae: str = ""
    evidence: CompletionRule | None = None
    incomplete: Incompleteness | None = None
    reason: str = ""

    @property
    def partial(self) -> bool:
        """Whether the study was completed known to be partial."""
        return self.incomplete is not None

    @classmethod
    def of(cls, decision: CompletionDecision, calling_ae: str) -> Completion:
        """The section of a ``COMPLETE`` decision.

        Raises:
            ValueError: The decision does not complete the study.
        """
        if not decision.complete or decision.rule is None:
            raise ValueError(f"decision: got {decision.outcome}; expected a complete decision")
        return cls(
            decision.rule,
            decision.not_before,
            calling_ae.strip(),
            decision.evidence,
            decision.incomplete,
            decision.reason,
        )

    def completed_study(self, study_uid: str) -> CompletedStudy:
        """What ``CompletenessPolicy.classify_arrival`` needs of this completion."""
        return CompletedStudy(study_uid, self.calling_ae, self.rule, self.at)


@dataclass(frozen=True, slots=True)
class PriorStudy:
    """A prior study as the ledger keeps it: no patient identity, no accession."""

    study_uid: str
    study_date: str = ""
    study_time: str = ""
    description: str = ""
    modalities: tuple[str, ...] = ()
    n_instances: int | None = None


@dataclass(frozen=True, slots=True)
class RetrievedSeries:
    """A prior series we retrieved (and hold), for families that compare images."""

    study_uid: str
    series_uid: str
    sop_instance_uids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PriorLink:
    """What the prior linker found for a job, or why it found nothing.

    Attributes:
        status: Found, none found, PACS unavailable, or disabled.
        reason: In words, for the SR and the audit trail.
        study: The chosen prior study.
        series: Its image series that match the current study, best first.
        conflicts: Studies with our Patient ID but another patient: never linked.
        considered: Candidate studies the PACS returned.
        evidence: The prior instances compared with (SR Pertinent Other Evidence).
        retrieved: The prior series we retrieved and hold, if any.
        results: Earlier AI results of the prior study, one per family at most.
    """

    status: PriorStatus
    reason: str = ""
    study: PriorStudy | None = None
    series: tuple[SeriesRecord, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    considered: int = 0
    evidence: tuple[InstanceRef, ...] = ()
    retrieved: RetrievedSeries | None = None
    results: tuple[PriorResult, ...] = ()

    @classmethod
    def from_search(cls, search: PriorSearch) -> PriorLink:
        """The link of a PACS search (the study without its patient identity)."""
        s = search.study
        study = (
            None
            if s is None
            else PriorStudy(s.study_uid, s.study_date, s.study_time, s.description, s.modalities, s.n_instances)
        )
        return cls(search.status, search.reason, study, search.series, search.conflicts, search.considered)

    def result(self, family: str) -> PriorResult | None:
        """The prior AI result of one family, if any."""
        return next((r for r in self.results if r.family == family), None)


@dataclass(frozen=True, slots=True)
class Inference:
    """What the inference stage produced for a job.

    Attributes:
        predictions: One per model family that ran (families whose input did not change
            since the study's last result are not run again).
        prior_predictions: The same models on the retrieved prior series, per family.
        inferred_at: When the last model answered (the job's clock).
    """

    predictions: tuple[Prediction, ...]
    prior_predictions: tuple[Prediction, ...] = ()
    inferred_at: float = 0.0

    def prior_prediction(self, family: str) -> Prediction | None:
        """The prediction on the prior images of one family, if any."""
        return next((p for p in self.prior_predictions if p.family == family), None)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """Everything the stages of one job have handed on, by section (module docstring)."""

    completion: Completion | None = None
    route: Route | None = None
    context: StudyContext | None = None
    priors: PriorLink | None = None
    inference: Inference | None = None
    accepted: tuple[AcceptedIssues, ...] = ()


@dataclass(frozen=True, slots=True)
class Job:
    """A study job as stored in the ledger.

    Attributes:
        job_id: Ledger key.
        study_instance_uid: The study.
        version: 1 for the first job of a study; a late instance or a quarantine release
            opens the next version.
        state: Where it is in the state machine (``core.ledger``).
        priority: Leasing order, highest first.
        attempts: Failures that spent the retry budget.
        not_before: When a stage may take it next.
        created_at: When the job was opened.
        updated_at: Its last change.
        last_instance_at: When its study's latest instance arrived.
        reason: Why it waits, was skipped or died, in words.
        lease_owner: The worker that holds it (empty: nobody).
        leased_until: When that lease expires.
        record: What its stages have handed on.
    """

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
    record: JobRecord = field(default_factory=JobRecord)
