"""Quarantine rules: what a release accepts, how operators name entries, reasons required."""

from __future__ import annotations

import json

import pytest

from core.errors import RejectedInput
from core.quarantine import (
    QuarantineRef,
    decide,
    format_id,
    issues_json,
    parse_reference,
    require_reason,
)
from core.types import ValidationIssue

GAP = ValidationIssue("slice_gap", "series 1.2: gap", "1.2.3", "series")
VR = ValidationIssue("invalid_vr", "Rows (0028,0010): got VR FL; expected US", "1.2.3")


def test_released_instance_goes_on_only_with_accepted_codes():
    verdict = decide({"1.2.3": [GAP]}, {"1.2.3": frozenset({"slice_gap"})})
    assert verdict.accepted == {"1.2.3": (GAP,)} and verdict.held == {}
    again = decide({"1.2.3": [GAP, VR]}, {"1.2.3": frozenset({"slice_gap"})})
    assert again.held == {"1.2.3": (GAP, VR)} and again.accepted == {}


def test_instances_without_issues_are_neither_held_nor_accepted():
    verdict = decide({"1.2.3": [], "1.2.4": [VR]}, {})
    assert list(verdict.held) == ["1.2.4"] and verdict.accepted == {}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Q12", QuarantineRef(qid=12)),
        ("q7", QuarantineRef(qid=7)),
        ("42", QuarantineRef(qid=42)),
        (" 1.2.840.10008.9 ", QuarantineRef(uid="1.2.840.10008.9")),
    ],
)
def test_references(text, expected):
    assert parse_reference(text) == expected


@pytest.mark.parametrize("text", ["", "Qx", "1.2.abc", "1." + "2" * 70, "rm -rf /"])
def test_bad_references_are_rejected_naming_the_field(text):
    with pytest.raises(RejectedInput, match="quarantine ID: got"):
        parse_reference(text)


def test_reason_is_required():
    assert require_reason("  scanner firmware known issue ", "release") == "scanner firmware known issue"
    for blank in (None, "", "   "):
        with pytest.raises(RejectedInput, match="reason: got nothing"):
            require_reason(blank, "discard")


def test_ids_and_json():
    assert format_id(3) == "Q3"
    assert json.loads(issues_json([GAP])) == [{"code": "slice_gap", "message": "series 1.2: gap", "level": "series"}]
