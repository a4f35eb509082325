"""Results for readers, the pure part (core.clinical): alert items, worklist order, review checks."""

from __future__ import annotations

import pytest

from core.auth import Principal, Scope, implied
from core.clinical import (
    ASSESSMENTS,
    COMMENT_MAX,
    FINAL_DIAGNOSIS_MAX,
    FindingDecision,
    ReviewRequest,
    WorklistEntry,
    alert_items_of,
    check_review,
    order_priority_of,
    parse_review,
    reader_of,
    worklist_entry,
    worklist_key,
)
from core.context import StudyContext
from core.errors import RejectedInput
from core.records import Finding, Prediction, QualityFlag
from core.sr_verified import Assessment
from core.types import CodedTerm

T = CodedTerm("1", "99TEST", "x")


def test_the_assessments_are_the_verified_srs() -> None:
    assert set(ASSESSMENTS) == {a.value for a in Assessment}


def test_review_scope_implies_read_and_admin_implies_review() -> None:
    assert implied(frozenset({Scope.REVIEW})) == {Scope.REVIEW, Scope.READ}
    assert Principal("oidc:a", frozenset({Scope.ADMIN})).may(Scope.REVIEW)
    assert not Principal("token:a", frozenset({Scope.OPERATE})).may(Scope.REVIEW)
    # Claims ride along but do not make two principals differ (nor break hashing).
    with_claims = Principal("oidc:a", frozenset({Scope.READ}), "oidc", claims={"groups": ["x"]})
    assert with_claims == Principal("oidc:a", frozenset({Scope.READ}), "oidc") and hash(with_claims)
    assert Principal("token:a", frozenset()).claims == {}


@pytest.mark.parametrize(
    ("fhir", "expected"),
    [("stat", "stat"), ("asap", "asap"), ("urgent", "asap"), ("routine", "routine"), ("STAT", "stat"), ("odd", None)],
)
def test_order_priority_from_the_study_context(fhir: str, expected: str | None) -> None:
    assert order_priority_of(StudyContext("accession", "ServiceRequest/1", "Patient/1", priority=fhir)) == expected
    assert order_priority_of(None) is None


def test_alert_items_are_every_finding_then_each_flag_once() -> None:
    prediction = Prediction(
        "chest_xray",
        "m",
        "1",
        (Finding("nodule", T, 0.9, 0.5), Finding("pneumothorax", T, 0.2, 0.5, critical=True)),
        ("1.2",),
        quality_flags=(QualityFlag("motion_artefact", "1.3", 5, 4), QualityFlag("motion_artefact", "1.4", 6, 4)),
    )
    items = alert_items_of(prediction, "stat")
    assert [(i.family, i.key, i.present, i.critical, i.quality_flag) for i in items] == [
        ("chest_xray", "nodule", True, False, False),
        ("chest_xray", "pneumothorax", False, True, False),
        ("quality", "motion_artefact", True, False, True),
    ]
    assert {i.order_priority for i in items} == {"stat"} and items[2].probability == 1.0


def test_readers_are_named_without_the_credential_kind() -> None:
    assert [reader_of(s) for s in ("oidc:dr-a", "token:dr-b", "x")] == ["dr-a", "dr-b", "x"]


def _entry(sr: str, critical: bool, priority: str | None, at: float) -> WorklistEntry:
    return WorklistEntry("s", sr, "f", "1", at, priority, critical, 0.5, ())


def test_worklist_order_is_critical_then_priority_then_newest() -> None:
    entries = [
        _entry("routine-new", False, "routine", 30.0),
        _entry("unknown", False, None, 50.0),
        _entry("stat", False, "stat", 10.0),
        _entry("critical-old", True, None, 1.0),
        _entry("asap", False, "asap", 5.0),
        _entry("routine-old", False, "routine", 20.0),
        _entry("critical-stat", True, "stat", 0.5),
    ]
    assert [e.sr_uid for e in sorted(entries, key=worklist_key)] == [
        "critical-stat",
        "critical-old",
        "stat",
        "asap",
        "routine-new",
        "routine-old",
        "unknown",
    ]


def test_an_entry_is_made_only_of_what_the_reader_may_see() -> None:
    prediction = Prediction(
        "cxr", "m", "1", (Finding("a", T, 0.7, 0.5, True), Finding("b", T, 0.95, 0.5)), ("1",),
        quality_flags=(QualityFlag("motion_artefact", "1", 5, 4),),
    )  # fmt: skip
    items = alert_items_of(prediction, None)
    assert worklist_entry("sr", "st", "cxr", "1", 1.0, []) is None
    entry = worklist_entry("sr", "st", "cxr", "1", 1.0, items[1:])
    assert entry is not None and not entry.critical and entry.top_probability == 0.95
    assert [a["finding"] for a in entry.to_json()["alerts"]] == ["b", "motion_artefact"]
    flag_only = worklist_entry("sr", "st", "cxr", "1", 1.0, items[2:])
    assert flag_only is not None and flag_only.top_probability == 0.0 and not flag_only.critical
    assert worklist_entry("sr", "st", "cxr", "1", 1.0, items[:1]).critical  # type: ignore[union-attr]


def test_a_review_is_parsed_and_every_bad_field_named() -> None:
    ok = parse_review(
        {
            "reader_name": "Reader^Rita",
            "findings": [{"finding": "nodule", "assessment": "override", "final_present": False, "comment": "c"}],
            "final_diagnosis": "none",
            "heatmap_viewed": True,
        }
    )
    assert ok == ReviewRequest("Reader^Rita", (FindingDecision("nodule", "override", False, "c"),), "none", True)
    assert (
        parse_review({"findings": [{"finding": "a", "assessment": "agree", "final_present": True}]}).reader_name == ""
    )
    with pytest.raises(RejectedInput) as err:
        parse_review(
            {
                "reader_name": 5,
                "findings": [
                    {"finding": "a", "assessment": "maybe", "final_present": "yes"},
                    {"finding": "b", "assessment": "agree", "final_present": True, "comment": "x" * (COMMENT_MAX + 1)},
                    {"finding": "c", "assessment": "agree", "final_present": True, "extra": 1},
                    {"finding": "c", "assessment": "agree", "final_present": True},
                    {"finding": "c", "assessment": "agree", "final_present": True},
                ],
                "final_diagnosis": "d" * (FINAL_DIAGNOSIS_MAX + 1),
                "surprise": True,
            }
        )
    text = str(err.value)
    for named in (
        "surprise: unexpected field",
        "reader_name: got int",
        "findings[0].assessment: got 'maybe'",
        "findings[0].final_present: got str",
        "findings[1].comment: got 1025 characters",
        "findings[2].extra: unexpected field",
        "findings: 'c' decided more than once",
        "final_diagnosis: got 4097 characters",
    ):
        assert named in text, named
    for empty in ({}, {"findings": []}, {"findings": "x"}):
        with pytest.raises(RejectedInput, match="findings"):
            parse_review(empty)


@pytest.mark.parametrize(
    ("assessment", "ai", "final", "ok"),
    [
        ("agree", True, True, True),
        ("agree", True, False, False),
        ("agree", False, False, True),
        ("disagree", True, False, True),
        ("disagree", False, True, True),
        ("disagree", True, True, False),
        ("override", True, True, True),
        ("override", True, False, True),
        ("override", False, True, True),
    ],
)
def test_final_presence_follows_the_assessment(assessment: str, ai: bool, final: bool, ok: bool) -> None:
    request = ReviewRequest("", (FindingDecision("nodule", assessment, final),))  # type: ignore[arg-type]
    if ok:
        check_review(request, {"nodule": ai})
    else:
        with pytest.raises(RejectedInput, match="findings.nodule"):
            check_review(request, {"nodule": ai})


def test_a_review_names_only_the_results_findings() -> None:
    request = ReviewRequest("", (FindingDecision("mass", "agree", True),))
    with pytest.raises(
        RejectedInput, match=r"findings.mass: not a finding of this result; expected one of \['nodule'\]"
    ):
        check_review(request, {"nodule": True})
