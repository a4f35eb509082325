"""AI results for readers (issue 12): alert items of an SR, the worklist's order, review requests.

Pure: the ledger (``state.ledger.clinical``) stores what these values describe and the API
(``api.clinical``) serves them; what a caller may see is decided by ``core.alert_policy`` alone.

- Each SR version becomes alert items (``alert_items``): one per finding, present or not, and
  one per image-quality flag (family ``quality``, probability 1.0), with the order's priority
  from the job's HL7 / FHIR context (``stat``, ``asap`` (FHIR ``asap`` or ``urgent``),
  ``routine``; ``None`` when the study came without an order).
- The worklist puts critical results first, then the order's priority (STAT, ASAP, routine,
  unknown), then the newest; ties by SR UID, so pages never overlap.
- A review holds, per finding, the reader's assessment and final determination: ``agree`` keeps
  the AI's presence, ``disagree`` flips it, ``override`` sets it (the reader's own, either way).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from core.alert_policy import AlertItem, OrderPriority
from core.config import AppConfig
from core.context import StudyContext
from core.errors import RejectedInput
from core.records import Prediction

__all__ = [
    "ASSESSMENTS",
    "COMMENT_MAX",
    "FINAL_DIAGNOSIS_MAX",
    "FindingDecision",
    "ORDER_RANK",
    "QUALITY_FAMILY",
    "QUALITY_FLAG_KEYS",
    "READER_NAME_MAX",
    "ReviewRequest",
    "StoredReview",
    "WorklistEntry",
    "WorklistPage",
    "alert_items_of",
    "check_review",
    "model_findings",
    "order_priority_of",
    "parse_review",
    "reader_of",
    "visible_keys",
    "worklist_entry",
    "worklist_key",
]

Assessment = Literal["agree", "disagree", "override"]
"""What a reader says about one AI finding (``core.sr_verified.Assessment``'s values; kept as
text here so the ledger and the API need not import the SR builder)."""
ASSESSMENTS: tuple[Assessment, ...] = ("agree", "disagree", "override")
QUALITY_FAMILY = "quality"
"""The alert family of image-quality flags (``core.alert_policy``)."""
QUALITY_FLAG_KEYS = ("incomplete_series", "motion_artefact")
"""The image-quality flags the bridge raises (``models.quality``, ``core.versions``)."""
COMMENT_MAX = 1024
"""Longest comment on one finding (characters; ``core.sr_verified`` writes it into the SR)."""
FINAL_DIAGNOSIS_MAX = 4096
"""Longest final diagnosis (characters)."""
READER_NAME_MAX = 64
"""Longest reader name as the verified SR shows it (a DICOM PN component group is 64)."""
ORDER_RANK: Mapping[str | None, int] = {"stat": 0, "asap": 1, "routine": 2, None: 3}
"""Worklist rank of an order priority (lower first; unknown last)."""
_FHIR_TO_ORDER: Mapping[str, OrderPriority] = {"stat": "stat", "asap": "asap", "urgent": "asap", "routine": "routine"}


def order_priority_of(context: StudyContext | None) -> OrderPriority | None:
    """The order priority the alert policy knows, from a job's study context.

    >>> order_priority_of(None) is None
    True
    >>> order_priority_of(StudyContext("accession", "ServiceRequest/x", "Patient/y", priority="urgent"))
    'asap'
    """
    if context is None:
        return None
    return _FHIR_TO_ORDER.get(context.priority.lower())


def alert_items_of(prediction: Prediction, order_priority: OrderPriority | None) -> list[AlertItem]:
    """Alert items of one prediction: every finding, then each quality flag once (first wins)."""
    items = [
        AlertItem(prediction.family, f.key, f.probability, f.present, f.critical, False, order_priority)
        for f in prediction.findings
    ]
    seen: set[str] = set()
    for flag in prediction.quality_flags:
        if flag.key not in seen:
            seen.add(flag.key)
            items.append(AlertItem(QUALITY_FAMILY, flag.key, 1.0, True, False, True, order_priority))
    return items


def reader_of(subject: str) -> str:
    """A principal's user name as the policy and the review tables know it (no ``token:`` / ``oidc:``).

    >>> reader_of("oidc:dr-er"), reader_of("token:tech-1"), reader_of("plain")
    ('dr-er', 'tech-1', 'plain')
    """
    for prefix in ("token:", "oidc:"):
        if subject.startswith(prefix):
            return subject[len(prefix) :]
    return subject


@dataclass(frozen=True, slots=True)
class WorklistEntry:
    """One result on a reader's worklist: the latest SR of a study and family.

    Attributes:
        study_uid: The study.
        sr_uid: The SR version shown.
        family: Model family.
        model_version: The model's version.
        created_at: When the SR version was recorded.
        order_priority: The order's priority, if known.
        critical: Whether an alert the reader may see is critical.
        top_probability: The highest probability among the visible findings (flags: 0 when alone).
        alerts: The alerts the reader may see (already filtered by the policy).
        reviewed: Whether this reader reviewed a finding of this SR version.
    """

    study_uid: str
    sr_uid: str
    family: str
    model_version: str
    created_at: float
    order_priority: str | None
    critical: bool
    top_probability: float
    alerts: tuple[AlertItem, ...]
    reviewed: bool = False

    def to_json(self) -> dict[str, Any]:
        """The API's worklist item."""
        return {
            "study_uid": self.study_uid,
            "sr_uid": self.sr_uid,
            "family": self.family,
            "model_version": self.model_version,
            "created_at": self.created_at,
            "order_priority": self.order_priority,
            "critical": self.critical,
            "top_probability": self.top_probability,
            "alerts": [
                {"finding": a.key, "probability": a.probability, "critical": a.critical, "quality_flag": a.quality_flag}
                for a in self.alerts
            ],
            "reviewed": self.reviewed,
        }


@dataclass(frozen=True, slots=True)
class WorklistPage:
    """A page of the worklist and how many results it has in all."""

    entries: tuple[WorklistEntry, ...]
    total: int


def worklist_entry(
    sr_uid: str,
    study_uid: str,
    family: str,
    model_version: str,
    created_at: float,
    visible: Sequence[AlertItem],
    reviewed: bool = False,
) -> WorklistEntry | None:
    """The worklist entry of an SR version from the alerts a reader may see (``None``: none)."""
    if not visible:
        return None
    findings = [a.probability for a in visible if not a.quality_flag]
    return WorklistEntry(
        study_uid,
        sr_uid,
        family,
        model_version,
        created_at,
        visible[0].order_priority,
        any(a.critical and not a.quality_flag for a in visible),
        max(findings, default=0.0),
        tuple(visible),
        reviewed,
    )


def worklist_key(entry: WorklistEntry) -> tuple[int, int, float, str]:
    """Sort key: critical first, then STAT > ASAP > routine > unknown, then newest, then SR UID.

    >>> a = WorklistEntry("s", "1", "f", "v", 10.0, "routine", True, 0.9, ())
    >>> b = WorklistEntry("s", "2", "f", "v", 20.0, "stat", False, 0.9, ())
    >>> [e.sr_uid for e in sorted([b, a], key=worklist_key)]
    ['1', '2']
    """
    return (0 if entry.critical else 1, ORDER_RANK.get(entry.order_priority, 3), -entry.created_at, entry.sr_uid)


@dataclass(frozen=True, slots=True)
class FindingDecision:
    """A reader's decision on one finding.

    Attributes:
        finding: The finding's key.
        assessment: Agree, disagree or override.
        final_present: The reader's determination: is the finding there?
        comment: Free text (sealed at rest).
    """

    finding: str
    assessment: Assessment
    final_present: bool
    comment: str = ""


@dataclass(frozen=True, slots=True)
class ReviewRequest:
    """A reader's submission on one AI SR version (checked by ``check_review``).

    Attributes:
        reader_name: The name the verified SR shows (DICOM PN, e.g. ``Reader^Rita``).
        findings: The decisions, one per finding.
        final_diagnosis: In words (sealed at rest).
        heatmap_viewed: Whether the reader looked at the heatmap before deciding.
    """

    reader_name: str
    findings: tuple[FindingDecision, ...]
    final_diagnosis: str = ""
    heatmap_viewed: bool = False


@dataclass(frozen=True, slots=True)
class StoredReview:
    """A reader's standing decision on one finding of one SR version (``finding_reviews``).

    Attributes:
        sr_uid: The SR version reviewed.
        job_version: Its job version (the result's version).
        reader: Who (the policy's user name).
        submission_id: The submission that made it.
        submission_version: That submission's version (1, 2, ... per SR and reader).
        finding: The finding's key.
        assessment: Agree, disagree or override.
        final_present: The reader's determination.
        comment: The comment, in clear.
        reviewed_at: When.
    """

    sr_uid: str
    job_version: int
    reader: str
    submission_id: int
    submission_version: int
    finding: str
    assessment: Assessment
    final_present: bool
    comment: str
    reviewed_at: float

    def to_json(self) -> dict[str, Any]:
        """The API's review item."""
        return {
            "reader": self.reader,
            "sr_uid": self.sr_uid,
            "version": self.job_version,
            "submission_version": self.submission_version,
            "finding": self.finding,
            "assessment": self.assessment,
            "final_present": self.final_present,
            "comment": self.comment,
            "reviewed_at": self.reviewed_at,
        }


def _field(raw: Mapping[str, Any], name: str, kind: type, where: str, problems: list[str]) -> Any:
    value = raw.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        problems.append(f"{where}{name}: got {type(value).__name__}; expected {kind.__name__}")
        return None
    return value


def parse_review(raw: Any) -> ReviewRequest:
    """A review request from its JSON body (types and lengths; ``check_review`` does the rest).

    Raises:
        RejectedInput: One message naming every offending field.
    """
    if not isinstance(raw, Mapping):
        raise RejectedInput(f"review: got {type(raw).__name__}; expected a JSON object")
    problems: list[str] = []
    extra = sorted(set(raw) - {"reader_name", "findings", "final_diagnosis", "heatmap_viewed"})
    problems += [f"{k}: unexpected field" for k in extra]
    name = _field(raw, "reader_name", str, "", problems) if "reader_name" in raw else ""
    diagnosis = _field(raw, "final_diagnosis", str, "", problems) if "final_diagnosis" in raw else ""
    viewed = _field(raw, "heatmap_viewed", bool, "", problems) if "heatmap_viewed" in raw else False
    if isinstance(name, str) and len(name) > READER_NAME_MAX:
        problems.append(f"reader_name: got {len(name)} characters; expected at most {READER_NAME_MAX}")
    if isinstance(diagnosis, str) and len(diagnosis) > FINAL_DIAGNOSIS_MAX:
        problems.append(f"final_diagnosis: got {len(diagnosis)} characters; expected at most {FINAL_DIAGNOSIS_MAX}")
    items = raw.get("findings")
    decisions: list[FindingDecision] = []
    if not isinstance(items, list) or not items:
        problems.append("findings: expected a non-empty list of decisions")
        items = []
    for n, item in enumerate(items):
        where = f"findings[{n}]."
        if not isinstance(item, Mapping):
            problems.append(f"findings[{n}]: expected an object")
            continue
        extra = sorted(set(item) - {"finding", "assessment", "final_present", "comment"})
        problems += [f"{where}{k}: unexpected field" for k in extra]
        key = _field(item, "finding", str, where, problems)
        said = _field(item, "assessment", str, where, problems)
        final = _field(item, "final_present", bool, where, problems)
        comment = _field(item, "comment", str, where, problems) if "comment" in item else ""
        assessment: Assessment | None = None
        if isinstance(said, str):
            if said in ASSESSMENTS:
                assessment = said  # type: ignore[assignment]
            else:
                problems.append(f"{where}assessment: got {said[:20]!r}; expected agree, disagree or override")
        if isinstance(comment, str) and len(comment) > COMMENT_MAX:
            problems.append(f"{where}comment: got {len(comment)} characters; expected at most {COMMENT_MAX}")
        if key is not None and assessment is not None and final is not None and comment is not None:
            decisions.append(FindingDecision(key, assessment, final, comment))
    keys = [d.finding for d in decisions]
    problems += [f"findings: {k!r} decided more than once" for k in sorted({k for k in keys if keys.count(k) > 1})]
    if problems:
        raise RejectedInput("review: " + "; ".join(problems))
    return ReviewRequest(name or "", tuple(decisions), diagnosis or "", bool(viewed))


def check_review(request: ReviewRequest, ai_present: Mapping[str, bool]) -> None:
    """Check a review against the AI result it concerns.

    Args:
        request: The parsed request.
        ai_present: The AI result's findings: key -> whether the AI reported it present.

    Raises:
        RejectedInput: A finding the result does not report, or a final determination that
            contradicts the assessment (agree keeps the AI's presence, disagree flips it).

    >>> ok = ReviewRequest("R^R", (FindingDecision("nodule", "disagree", False),))
    >>> check_review(ok, {"nodule": True})
    >>> check_review(ok, {"nodule": False})
    Traceback (most recent call last):
    ...
    core.errors.RejectedInput: review: findings.nodule: disagree with the AI's present=False means final_present=True
    """
    problems: list[str] = []
    for d in request.findings:
        if d.finding not in ai_present:
            problems.append(f"findings.{d.finding}: not a finding of this result; expected one of {sorted(ai_present)}")
            continue
        ai = ai_present[d.finding]
        if d.assessment == "agree" and d.final_present != ai:
            problems.append(f"findings.{d.finding}: agree with the AI's present={ai} means final_present={ai}")
        if d.assessment == "disagree" and d.final_present == ai:
            problems.append(f"findings.{d.finding}: disagree with the AI's present={ai} means final_present={not ai}")
    if problems:
        raise RejectedInput("review: " + "; ".join(problems))


def visible_keys(items: Iterable[AlertItem]) -> set[str]:
    """The finding keys among alert items (quality flags left out)."""
    return {i.key for i in items if not i.quality_flag}


def model_findings(cfg: AppConfig) -> dict[str, list[str]]:
    """Model family -> its finding keys, plus ``quality`` -> the image-quality flags (what
    ``core.alert_policy.policy_problems`` checks a policy's names against)."""
    families = {family: [s.key for s in entry.findings] for family, entry in cfg.models.items()}
    return families | {QUALITY_FAMILY: list(QUALITY_FLAG_KEYS)}
