"""The success measures a radiology department reports about its AI, computed from what happened.

Per model version and calendar month (UTC), from the ledger's results and the readers' reviews
(issue 12; the seed's list):

- ``utilisation``: studies whose AI result a reader opened / studies with a result.
- ``false_positive_rate``: findings the AI called present that the reader disagreed with (or
  overrode to absent) / findings the AI called present that were reviewed.
- ``critical_sensitivity``: critical findings the reader's final diagnosis says are present and
  the AI called present / critical findings the final diagnosis says are present.
- ``agreement_rate``: reviewed findings the reader agreed with / reviewed findings.
- ``turnaround_archive_to_sr_p50_s`` / ``_p90_s`` and ``turnaround_sr_to_review_p50_s``.
- ``uptime``: the share of health samples in which the model's deployment answered.

A rate whose denominator is zero is ``None`` (not 0 or 1: nothing was measured). ``agreement_alerts``
names every model version and month whose agreement rate fell below the configured floor with
enough reviews to mean something: accuracy monitored over time, not a one-off validation.

Pure: records in, rows out; the ledger query, the Parquet file and the page's plots are elsewhere.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = [
    "AgreementAlert",
    "FindingOutcome",
    "HealthSample",
    "MonthlyMeasures",
    "ResultRecord",
    "ReviewRecord",
    "agreement_alerts",
    "measures",
    "month_of",
]


def month_of(at: float) -> str:
    """The UTC calendar month of a POSIX time, ``YYYY-MM``.

    >>> month_of(0.0)
    '1970-01'
    """
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m")


@dataclass(frozen=True, slots=True)
class FindingOutcome:
    """One finding of one AI result: what the AI said."""

    key: str
    present: bool
    critical: bool = False


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """One AI result of one study (the ledger's delivered job).

    Attributes:
        study_uid: The study.
        model_version: ``family@version`` of the model that produced it.
        archived_at: When the study's last instance reached us (POSIX seconds).
        sr_at: When the SR was stored in the PACS.
        opened_at: When a reader first opened the result (``None``: never).
        findings: What the AI said per finding.
    """

    study_uid: str
    model_version: str
    archived_at: float
    sr_at: float
    opened_at: float | None = None
    findings: tuple[FindingOutcome, ...] = ()


@dataclass(frozen=True, slots=True)
class ReviewRecord:
    """A reader's decision on one finding of one result.

    Attributes:
        study_uid: The study.
        model_version: The result's model (``family@version``).
        finding: The finding key.
        assessment: ``agree``, ``disagree`` or ``override``.
        final_present: The reader's final determination of the finding.
        reviewed_at: When (POSIX seconds).
    """

    study_uid: str
    model_version: str
    finding: str
    assessment: str
    final_present: bool
    reviewed_at: float


@dataclass(frozen=True, slots=True)
class HealthSample:
    """Whether a model version's deployment answered at one moment."""

    model_version: str
    at: float
    up: bool


@dataclass(frozen=True, slots=True)
class MonthlyMeasures:
    """The measures of one model version in one month (see the module for each)."""

    model_version: str
    month: str
    studies_with_results: int
    utilisation: float | None
    findings_reviewed: int
    false_positive_rate: float | None
    critical_sensitivity: float | None
    agreement_rate: float | None
    turnaround_archive_to_sr_p50_s: float | None
    turnaround_archive_to_sr_p90_s: float | None
    turnaround_sr_to_review_p50_s: float | None
    uptime: float | None


@dataclass(frozen=True, slots=True)
class AgreementAlert:
    """A model version whose readers agreed with it less often than the floor allows."""

    model_version: str
    month: str
    agreement_rate: float
    reviews: int
    floor: float


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile (no interpolation: every reported value happened)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class _Bucket:
    results: list[ResultRecord] = field(default_factory=list)
    reviews: list[ReviewRecord] = field(default_factory=list)
    health: list[bool] = field(default_factory=list)


def _review_rates(bucket: _Bucket, said: dict[tuple[str, str], FindingOutcome]) -> tuple[float | None, ...]:
    """False-positive rate, critical sensitivity, agreement rate of one bucket's reviews."""
    latest: dict[tuple[str, str], ReviewRecord] = {}
    for r in sorted(bucket.reviews, key=lambda r: r.reviewed_at):
        latest[(r.study_uid, r.finding)] = r  # a later review of the same finding replaces the earlier
    flagged = [(k, r) for k, r in latest.items() if k in said and said[k].present]
    false_pos = sum(1 for _, r in flagged if r.assessment != "agree" and not r.final_present)
    critical = [(k, r) for k, r in latest.items() if k in said and said[k].critical and r.final_present]
    caught = sum(1 for k, _ in critical if said[k].present)
    agreed = sum(1 for r in latest.values() if r.assessment == "agree")
    return _ratio(false_pos, len(flagged)), _ratio(caught, len(critical)), _ratio(agreed, len(latest))


def _measure(version: str, month: str, bucket: _Bucket) -> MonthlyMeasures:
    said = {(r.study_uid, f.key): f for r in bucket.results for f in r.findings}
    fp, sens, agree = _review_rates(bucket, said)
    opened = [r for r in bucket.results if r.opened_at is not None]
    first_review = {}
    for rv in bucket.reviews:
        first_review[rv.study_uid] = min(rv.reviewed_at, first_review.get(rv.study_uid, math.inf))
    to_review = [first_review[r.study_uid] - r.sr_at for r in bucket.results if r.study_uid in first_review]
    to_sr = [r.sr_at - r.archived_at for r in bucket.results]
    return MonthlyMeasures(
        model_version=version,
        month=month,
        studies_with_results=len({r.study_uid for r in bucket.results}),
        utilisation=_ratio(len({r.study_uid for r in opened}), len({r.study_uid for r in bucket.results})),
        findings_reviewed=len({(r.study_uid, r.finding) for r in bucket.reviews}),
        false_positive_rate=fp,
        critical_sensitivity=sens,
        agreement_rate=agree,
        turnaround_archive_to_sr_p50_s=_quantile(to_sr, 0.5),
        turnaround_archive_to_sr_p90_s=_quantile(to_sr, 0.9),
        turnaround_sr_to_review_p50_s=_quantile(to_review, 0.5),
        uptime=_ratio(sum(bucket.health), len(bucket.health)),
    )


def measures(
    results: Iterable[ResultRecord], reviews: Iterable[ReviewRecord], health: Iterable[HealthSample] = ()
) -> list[MonthlyMeasures]:
    """The measures per model version and month (of the result's SR; a review counts in the
    month of the result it concerns, so a late review does not move a result between months)."""
    buckets: dict[tuple[str, str], _Bucket] = defaultdict(_Bucket)
    month_of_result: dict[tuple[str, str], str] = {}
    for r in results:
        key = (r.model_version, month_of(r.sr_at))
        buckets[key].results.append(r)
        month_of_result[(r.model_version, r.study_uid)] = key[1]
    for rv in reviews:
        month = month_of_result.get((rv.model_version, rv.study_uid), month_of(rv.reviewed_at))
        buckets[(rv.model_version, month)].reviews.append(rv)
    for h in health:
        buckets[(h.model_version, month_of(h.at))].health.append(h.up)
    return [_measure(v, m, buckets[(v, m)]) for v, m in sorted(buckets)]


def agreement_alerts(rows: Iterable[MonthlyMeasures], floor: float, min_reviews: int = 20) -> list[AgreementAlert]:
    """Model versions and months whose agreement rate is below ``floor`` over at least
    ``min_reviews`` reviewed findings (fewer would alert on noise)."""
    return [
        AgreementAlert(r.model_version, r.month, r.agreement_rate, r.findings_reviewed, floor)
        for r in rows
        if r.agreement_rate is not None and r.findings_reviewed >= min_reviews and r.agreement_rate < floor
    ]
