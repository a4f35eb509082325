"""Success measures per model version and month (core.success_metrics)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.success_metrics import (
    FindingOutcome,
    HealthSample,
    ResultRecord,
    ReviewRecord,
    agreement_alerts,
    measures,
)

NOV = datetime(2026, 11, 10, tzinfo=UTC).timestamp()
DEC = datetime(2026, 12, 2, tzinfo=UTC).timestamp()
V1, V2 = "chest_xray@1.0.0", "chest_xray@2.0.0"


def _result(uid: str, at: float, opened: bool, *findings: FindingOutcome, version: str = V1) -> ResultRecord:
    return ResultRecord(uid, version, at - 60.0, at, at + 300.0 if opened else None, findings)


def _review(uid: str, finding: str, assessment: str, present: bool, at: float, version: str = V1) -> ReviewRecord:
    return ReviewRecord(uid, version, finding, assessment, present, at)


PTX = "pneumothorax"


def test_each_measure_is_counted_from_results_and_reviews() -> None:
    results = [
        _result("s1", NOV, True, FindingOutcome(PTX, True, True), FindingOutcome("nodule", True)),
        _result("s2", NOV + 10, True, FindingOutcome(PTX, False, True)),
        _result("s3", NOV + 20, False, FindingOutcome(PTX, True, True)),
        _result("s4", NOV + 30, False),
    ]
    reviews = [
        _review("s1", PTX, "agree", True, NOV + 600),
        _review("s1", "nodule", "disagree", False, NOV + 600),  # a false positive
        _review("s2", PTX, "override", True, NOV + 1200),  # a critical finding the AI missed
    ]
    health = [HealthSample(V1, NOV + i, up=i != 3) for i in range(10)]
    [row] = measures(results, reviews, health)
    assert (row.model_version, row.month, row.studies_with_results) == (V1, "2026-11", 4)
    assert row.utilisation == 0.5  # s1, s2 opened of 4
    assert row.false_positive_rate == 0.5  # of s1's two present findings, the nodule was disagreed with
    assert row.critical_sensitivity == 0.5  # final diagnosis: ptx in s1 (AI said yes) and s2 (AI said no)
    assert row.agreement_rate == pytest.approx(1 / 3)
    assert row.turnaround_archive_to_sr_p50_s == 60.0
    assert row.turnaround_sr_to_review_p50_s == 600.0  # s1 600 s, s2 1190 s: nearest rank
    assert row.uptime == 0.9 and row.findings_reviewed == 3


def test_versions_and_months_are_apart_and_a_late_review_counts_with_its_result() -> None:
    results = [_result("a", NOV, True, FindingOutcome(PTX, True)), _result("b", DEC, True, version=V2)]
    reviews = [_review("a", PTX, "agree", True, DEC + 100)]  # reviewed in December, result of November
    rows = {(r.model_version, r.month): r for r in measures(results, reviews)}
    assert set(rows) == {(V1, "2026-11"), (V2, "2026-12")}
    assert rows[(V1, "2026-11")].agreement_rate == 1.0
    assert rows[(V2, "2026-12")].agreement_rate is None  # nothing reviewed: not measured, not zero
    assert rows[(V2, "2026-12")].false_positive_rate is None and rows[(V2, "2026-12")].uptime is None


def test_a_re_review_replaces_the_readers_earlier_decision() -> None:
    results = [_result("a", NOV, True, FindingOutcome(PTX, True))]
    reviews = [_review("a", PTX, "disagree", False, NOV + 100), _review("a", PTX, "agree", True, NOV + 200)]
    [row] = measures(results, reviews)
    assert row.agreement_rate == 1.0 and row.false_positive_rate == 0.0 and row.findings_reviewed == 1


def test_an_agreement_rate_below_the_floor_alerts_once_there_are_enough_reviews() -> None:
    results = [_result(f"s{i}", NOV + i, True, FindingOutcome(PTX, True)) for i in range(30)]
    reviews = [_review(f"s{i}", PTX, "agree" if i < 18 else "disagree", i < 18, NOV + 500) for i in range(30)]
    rows = measures(results, reviews)
    [alert] = agreement_alerts(rows, floor=0.8)
    assert (alert.model_version, alert.month, alert.reviews) == (V1, "2026-11", 30)
    assert alert.agreement_rate == pytest.approx(0.6)
    assert agreement_alerts(rows, floor=0.5) == []
    assert agreement_alerts(rows, floor=0.8, min_reviews=31) == []  # too few reviews to mean anything
