from __future__ import annotations

from dataclasses import replace
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from core.codec import dump_record, load_record
from core.findings import term_for
from core.interval import (
    ComparisonStatus,
    IntervalChange,
    PriorFinding,
    PriorResult,
    comparison_for,
    interval_changes,
)
from core.job import PriorLink, PriorStudy
from core.priors import InstanceRef, PriorStatus
from core.records import Finding, Prediction
from core.sr import SRBuilder, SRIdentity


def pred(*findings, family="chest_xray"):
    items = tuple(Finding(k, term_for(k), p, 0.5, size_mm=size) for k, p, size in findings)
    return Prediction(family, "cxr-net", "1.0", items, ("1.2.3",))


def prior(*findings):
    return PriorResult(
        "old",
        "20240101",
        "chest_xray",
        "cxr-net",
        "0.9",
        "ledger",
        tuple(PriorFinding(k, p, p >= 0.5, size) for k, p, size in findings),
    )


@pytest.mark.parametrize(
    ("now", "before", "change"),
    [
        ((0.8, None), (0.2, None), IntervalChange.NEW),
        ((0.2, None), (0.8, None), IntervalChange.RESOLVED),
        ((0.9, None), (0.6, None), IntervalChange.INCREASED),
        ((0.3, None), (0.45, None), IntervalChange.DECREASED),
        ((0.7, None), (0.6, None), IntervalChange.UNCHANGED),
        ((0.7, 14.0), (0.6, 10.0), IntervalChange.INCREASED),  # size grew by >= 2 mm
        ((0.7, 9.0), (0.6, 10.0), IntervalChange.UNCHANGED),
    ],
)
def test_interval_change_rules(now, before, change):
    [c] = interval_changes(pred(("nodule", *now)), prior(("nodule", *before)), 0.15, 2.0)
    assert c.change is change


def test_a_finding_missing_from_the_prior_is_not_assessed_and_text_names_values():
    changes = interval_changes(
        pred(("nodule", 0.8, 14.0), ("mass", 0.1, None)), prior(("nodule", 0.2, 10.0)), 0.15, 2.0
    )
    assert [c.change for c in changes] == [IntervalChange.NEW, IntervalChange.NOT_ASSESSED]
    assert changes[0].describe() == "new: probability 0.20 -> 0.80 (+0.60); size 10.0 -> 14.0 mm (+4.0 mm)"
    assert changes[1].describe().startswith("not assessed")


@pytest.mark.parametrize(
    ("status", "expected", "text"),
    [
        ("unavailable", ComparisonStatus.UNAVAILABLE, "Priors were not available"),
        ("none_found", ComparisonStatus.NO_PRIOR, "No prior study was found"),
        ("disabled", ComparisonStatus.NOT_LOOKED_UP, "not looked up"),
    ],
)
def test_no_comparison_always_says_why(status, expected, text):
    c = comparison_for(PriorLink(PriorStatus(status), "r"), pred(("nodule", 0.8, None)), None, 0.15, 2.0)
    assert c.status is expected and not c.done and text in c.summary() and "(r)" in c.summary()
    assert comparison_for(None, pred(("nodule", 0.8, None)), None, 0.15, 2.0).status is ComparisonStatus.NOT_LOOKED_UP


FOUND = PriorLink(
    PriorStatus.FOUND,
    study=PriorStudy("old", "20240101", modalities=("DX",), description="CHEST"),
    evidence=(InstanceRef("old", "old.1", "1.2", "old.1.1"),),
)


def test_found_prior_without_a_result_is_named_but_not_compared():
    c = comparison_for(FOUND, pred(("nodule", 0.8, None)), None, 0.15, 2.0)
    assert c.status is ComparisonStatus.NO_PRIOR_RESULT and not c.done
    assert "Prior study old of 20240101 (DX CHEST)" in c.summary()


def test_prior_result_from_the_ledger_or_from_the_model_on_prior_images():
    sr = InstanceRef("old", "old.9", "1.2.840.10008.5.1.4.1.1.88.34", "old.9.1")
    stored = prior(("nodule", 0.2, None))
    with_result = replace(FOUND, results=(replace(stored, sr=sr),))
    c = comparison_for(with_result, pred(("nodule", 0.8, None)), None, 0.15, 2.0)
    assert c.done and c.changes[0].change is IntervalChange.NEW
    assert sr in c.evidence and "cxr-net 0.9 (our earlier SR)" in c.summary()
    on_images = comparison_for(with_result, pred(("nodule", 0.8, None)), pred(("nodule", 0.75, None)), 0.15, 2.0)
    assert on_images.prior_result.source == "model" and on_images.changes[0].change is IntervalChange.UNCHANGED
    assert load_record(PriorResult, dump_record(stored)) == stored


def test_prior_result_read_back_from_our_own_sr():
    source = dcmread(get_testdata_file("CT_small.dcm"))
    p = Prediction(
        "chest_xray",
        "cxr-net",
        "1.0",
        (Finding("nodule", term_for("nodule"), 0.81, 0.5), Finding("mass", term_for("mass"), 0.1, 0.5)),
        (str(source.SOPInstanceUID),),
    )
    buf = BytesIO()
    SRBuilder(SRIdentity("X", 9900)).build([source], p).save_as(buf, enforce_file_format=True)
    result = PriorResult.from_sr(dcmread(BytesIO(buf.getvalue())), "chest_xray", "pacs")
    assert {f.key: (round(f.probability, 2), f.present) for f in result.findings} == {
        "nodule": (0.81, True),
        "mass": (0.1, False),
    }
    assert (result.model_name, result.model_version, result.study_uid) == (
        "cxr-net",
        "1.0",
        str(source.StudyInstanceUID),
    )
    assert result.sr is not None and result.sr.sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.34"
    with pytest.raises(ValueError, match="family 'brain'"):
        PriorResult.from_sr(dcmread(BytesIO(buf.getvalue())), "brain", "pacs")


def test_a_linked_study_that_is_not_earlier_is_never_compared():
    """Issue 18: interval change was stated backwards when the 'prior' was the newer study."""
    sr = InstanceRef("old", "old.9", "1.2.840.10008.5.1.4.1.1.88.34", "old.9.1")
    linked = replace(FOUND, results=(replace(prior(("nodule", 0.2, None)), sr=sr),))
    late = comparison_for(
        linked, pred(("nodule", 0.8, None)), None, 0.15, 2.0, current_study_date="20231231", current_study_time=""
    )
    assert late.status is ComparisonStatus.NO_PRIOR and not late.done and late.changes == ()
    assert "not earlier than this study" in late.summary()
    same_day = comparison_for(
        linked, pred(("nodule", 0.8, None)), None, 0.15, 2.0, current_study_date="20240101", current_study_time=""
    )
    assert same_day.status is ComparisonStatus.NO_PRIOR  # same day, no times: not provably earlier
    fine = comparison_for(
        linked, pred(("nodule", 0.8, None)), None, 0.15, 2.0, current_study_date="20240102", current_study_time=""
    )
    assert fine.done
