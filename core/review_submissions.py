"""A reader's review submission on the way back to the PACS as a verified SR (issue 12).

The API records a submission (``review_submissions``, with one ``finding_reviews`` row per
decided finding); the delivery actor's verified-SR loop (``actors.verified_delivery``) reads the
pending ones as ``ReviewSubmission`` and turns each into ``core.sr_verified.verified_sr`` inputs
here. Pure: no I/O.

States: ``pending`` until the PACS accepts the verified SR (``delivered``); ``superseded`` when
the same reader submitted again on the same AI SR before it was sent (the older one is never
sent after the newer); ``dead`` once the PACS refused it ``retry.max_attempts`` times. A PACS that
cannot be reached costs no attempt: the submission waits for it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.findings import term_for
from core.uids import uid_from_parts

if TYPE_CHECKING:  # highdicom stays out of every ``import state.ledger`` (the ledger reads these types)
    from core.records import Prediction
    from core.sr_verified import FindingReview, Reader

__all__ = [
    "ReviewDecision",
    "ReviewSubmission",
    "SubmissionState",
    "finding_reviews",
    "newest_per_reader",
    "reader_of",
    "refusal_is_final",
    "verified_series_uid",
]


class SubmissionState(enum.StrEnum):
    """Where a review submission's verified SR is."""

    PENDING = "pending"
    DELIVERED = "delivered"
    SUPERSEDED = "superseded"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class ReviewDecision:
    """The reader's decision on one finding, as stored (``finding_reviews``).

    Attributes:
        finding: The finding's key.
        assessment: ``agree`` / ``disagree`` / ``override``.
        final_present: The reader's own determination.
        comment: Free text (unsealed).
    """

    finding: str
    assessment: str
    final_present: bool
    comment: str = ""


@dataclass(frozen=True, slots=True)
class ReviewSubmission:
    """One reader's submission on one AI SR version, with its decisions (unsealed).

    Attributes:
        submission_id: Its row.
        sr_uid: The AI SR reviewed.
        study_uid: The study.
        family: The model family.
        model_version: ``family@version`` of the AI result.
        reader: The reader's user name (the policy's; in UIDs and the audit trail).
        reader_name: DICOM person name shown as Verifying Observer (may be empty).
        version: The reader's n-th submission on this AI SR.
        final_diagnosis: In words (unsealed).
        submitted_at: When it was signed (the verified SR's content and verification time).
        decisions: The reader's decisions on this AI SR, one per finding.
        state: Where its verified SR is.
        attempts: Refusals so far.
        verified_uid: The verified SR's SOP Instance UID once built, else empty.
        verified_path: Its file in the outbox directory once built, else empty.
        last_error: Why the last attempt failed (empty: none did).
    """

    submission_id: int
    sr_uid: str
    study_uid: str
    family: str
    model_version: str
    reader: str
    reader_name: str
    version: int
    final_diagnosis: str
    submitted_at: float
    decisions: tuple[ReviewDecision, ...]
    state: SubmissionState = SubmissionState.PENDING
    attempts: int = 0
    verified_uid: str = ""
    verified_path: str = ""
    last_error: str = ""


def reader_of(submission: ReviewSubmission, organization: str) -> Reader:
    """The Verifying Observer: the name the reader gave, else the user name as a person name.

    >>> s = ReviewSubmission(1, "1.2", "1.3", "cxr", "cxr@1", "rita", "", 1, "", 0.0, ())
    >>> reader_of(s, "General Hospital")
    Reader(user_id='rita', name='rita', organization='General Hospital')
    """
    from core.sr_verified import Reader

    name = submission.reader_name.strip() or submission.reader
    return Reader(submission.reader, name[:64], organization)


def finding_reviews(submission: ReviewSubmission, prediction: Prediction | None) -> list[FindingReview]:
    """The decisions as ``verified_sr`` takes them: each finding's code as the AI SR reports it
    (from the prediction; the catalogue's code when the prediction is not known).

    >>> from core.records import Finding, Prediction
    >>> from core.types import CodedTerm
    >>> term = CodedTerm("427359005", "SCT", "Nodule")
    >>> p = Prediction("cxr", "m", "1", (Finding("nodule", term, 0.9, 0.5),), ())
    >>> s = ReviewSubmission(1, "1.2", "1.3", "cxr", "cxr@1", "rita", "", 1, "", 0.0,
    ...                      (ReviewDecision("nodule", "disagree", False, "scar"),))
    >>> finding_reviews(s, p)[0].assessment, finding_reviews(s, p)[0].term.value
    (<Assessment.DISAGREE: 'disagree'>, '427359005')
    """
    from core.sr_verified import Assessment, FindingReview

    terms = {f.key: f.term for f in prediction.findings} if prediction is not None else {}
    return [
        FindingReview(terms.get(d.finding) or term_for(d.finding), Assessment(d.assessment), d.final_present, d.comment)
        for d in submission.decisions
    ]


def refusal_is_final(attempts_before: int, max_attempts: int) -> bool:
    """Whether a PACS refusal (one more attempt) ends the submission ``dead``.

    >>> refusal_is_final(0, 3), refusal_is_final(2, 3)
    (False, True)
    """
    return attempts_before + 1 >= max_attempts


def newest_per_reader(submissions: Sequence[ReviewSubmission]) -> list[ReviewSubmission]:
    """Of several pending submissions, only each reader's newest per AI SR (the rest are
    superseded), in submission order.

    >>> a = ReviewSubmission(1, "1.2", "1.3", "cxr", "cxr@1", "rita", "", 1, "", 0.0, ())
    >>> b = ReviewSubmission(2, "1.2", "1.3", "cxr", "cxr@1", "rita", "", 2, "", 1.0, ())
    >>> [s.submission_id for s in newest_per_reader([a, b])]
    [2]
    """
    newest: dict[tuple[str, str], ReviewSubmission] = {}
    for s in submissions:
        key = (s.sr_uid, s.reader)
        if key not in newest or s.version > newest[key].version:
            newest[key] = s
    return sorted(newest.values(), key=lambda s: s.submission_id)


def verified_series_uid(ai_series_uid: str) -> str:
    """The series of the verified SRs of one AI SR series (ours: left out of the PACS's counts).

    >>> verified_series_uid("1.2.3") == verified_series_uid("1.2.3") != verified_series_uid("1.2.4")
    True
    """
    return uid_from_parts("verified-series", ai_series_uid)
