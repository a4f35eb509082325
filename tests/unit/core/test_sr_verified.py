"""A radiologist's review goes back as a VERIFIED SR naming the AI SR (core.sr_verified)."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from core.findings import term_for
from core.records import Finding, Prediction
from core.sr import SRBuilder, SRIdentity
from core.sr_verified import Assessment, FindingReview, Reader, ReviewError, verified_sr

WHEN = datetime(2026, 12, 6, 10, 30, 0)
READER = Reader("rita", "Reader^Rita", "General Hospital Radiology")


def _roundtrip(ds):
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return dcmread(buf)


@pytest.fixture(scope="module")
def ai_sr():
    source = dcmread(get_testdata_file("CT_small.dcm"))
    findings = (
        Finding("pneumothorax", term_for("pneumothorax"), 0.91, 0.5, critical=True),
        Finding("nodule", term_for("nodule"), 0.12, 0.5),
    )
    pred = Prediction("chest_xray", "cxr-net", "1.0.0", findings, (str(source.SOPInstanceUID),), demo=True)
    return _roundtrip(SRBuilder(SRIdentity("PACS-AI Bridge", 9900)).build([source], pred))


def _reviews():
    return [
        FindingReview(term_for("pneumothorax"), Assessment.AGREE, True, "small apical pneumothorax"),
        FindingReview(term_for("nodule"), Assessment.OVERRIDE, True, "8 mm nodule right upper lobe"),
    ]


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def test_the_review_is_verified_by_the_reader_and_supersedes_the_ai_sr(ai_sr) -> None:
    ds = _roundtrip(verified_sr(ai_sr, READER, _reviews(), "Right pneumothorax; RUL nodule", WHEN))
    assert ds.VerificationFlag == "VERIFIED" and ai_sr.VerificationFlag == "UNVERIFIED"
    [verifier] = ds.VerifyingObserverSequence
    assert verifier.VerifyingObserverName == "Reader^Rita" and verifier.VerificationDateTime.startswith(
        "20261206103000"
    )
    [pred] = ds.PredecessorDocumentsSequence
    ref = pred.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == ai_sr.SOPInstanceUID and pred.StudyInstanceUID == ai_sr.StudyInstanceUID
    assert ds.SOPInstanceUID != ai_sr.SOPInstanceUID and ds.StudyInstanceUID == ai_sr.StudyInstanceUID
    assert ds.PatientID == ai_sr.PatientID
    names = [i.get("PersonName") for i in ds.ContentSequence if "PersonName" in i]
    assert "Reader^Rita" in [str(n) for n in names]  # the reader is a person observer beside the AI device


def test_each_reviewed_finding_carries_the_readers_assessment_determination_and_comment(ai_sr) -> None:
    ds = verified_sr(ai_sr, READER, _reviews(), "dx", WHEN)
    values = [(i.ConceptNameCodeSequence[0].CodeValue, i) for i in _walk(ds.ContentSequence)]
    assessments = [i.ConceptCodeSequence[0].CodeMeaning for c, i in values if c == "RV001"]
    assert assessments == ["Reader agrees with AI", "Reader overrides AI"]
    determinations = [i.ConceptCodeSequence[0].CodeValue for c, i in values if c == "RV002"]
    assert determinations == ["52101004", "52101004"]
    comments = [i.TextValue for c, i in values if c == "121106"]
    assert comments == ["small apical pneumothorax", "8 mm nodule right upper lobe"]
    assert [i.TextValue for c, i in values if c == "RV003"] == ["dx"]


def test_the_same_review_builds_the_same_object_and_a_re_review_a_new_one(ai_sr) -> None:
    first = verified_sr(ai_sr, READER, _reviews(), "dx", WHEN)
    assert verified_sr(ai_sr, READER, _reviews(), "dx", WHEN).SOPInstanceUID == first.SOPInstanceUID
    assert verified_sr(ai_sr, READER, _reviews(), "dx", WHEN, review_version=2).SOPInstanceUID != first.SOPInstanceUID


def test_a_review_of_a_finding_the_ai_did_not_report_is_refused(ai_sr) -> None:
    with pytest.raises(ReviewError, match="not reported"):
        verified_sr(ai_sr, READER, [FindingReview(term_for("aortic_dissection"), Assessment.AGREE, True)], "", WHEN)
    with pytest.raises(ReviewError, match="empty"):
        verified_sr(ai_sr, READER, [], "", WHEN)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_the_verified_sr_passes_dciodvfy(ai_sr, tmp_path: Path) -> None:
    path = tmp_path / "verified.dcm"
    verified_sr(ai_sr, READER, _reviews(), "Right pneumothorax", WHEN).save_as(path, enforce_file_format=True)
    result = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60, check=False)
    output = result.stdout + result.stderr
    assert not [line for line in output.splitlines() if line.startswith("Error")], output
