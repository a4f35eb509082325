from __future__ import annotations

from io import BytesIO

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes

from core.findings import term_for
from core.sr import COPIED_ATTRIBUTES, SRBuilder, SRIdentity, differing_attributes
from core.types import Finding, Prediction


@pytest.fixture
def source():
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.AccessionNumber = "ACC42"
    ds.IssuerOfPatientID = "HOSP"
    return ds


def prediction(source, version="1.0.0", probs=(0.91, 0.12)):
    findings = (
        Finding("pneumothorax", term_for("pneumothorax"), probs[0], 0.5, critical=True),
        Finding("nodule", term_for("nodule"), probs[1], 0.5),
    )
    return Prediction("chest_xray", "cxr-net", version, findings, (str(source.SOPInstanceUID),), demo=True)


def build(source, pred):
    sr = SRBuilder(SRIdentity("PACS-AI Bridge", 9900)).build([source], pred)
    buf = BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return dcmread(buf), sr


def test_sr_is_tid1500_comprehensive3d_with_device_observer(source):
    ds, _ = build(source, prediction(source))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert ds.CompletionFlag == "COMPLETE" and ds.VerificationFlag == "UNVERIFIED"
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert "DEMO" in ds.SeriesDescription
    observer = [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121005"]
    assert observer[0].ConceptCodeSequence[0].CodeValue == "121007"  # Device


def test_one_group_per_finding_with_presence_probability_algorithm(source):
    ds, _ = build(source, prediction(source))
    report = hd.sr.Comprehensive3DSR.from_dataset(ds)
    groups = report.content.get_image_measurement_groups()
    assert len(groups) == 2
    by_key = {g.tracking_identifier: g for g in groups}
    ptx = by_key["chest_xray:pneumothorax"]
    assert ptx.finding_type.value == "36118008"
    assert ptx.get_qualitative_evaluations(name=codes.DCM.PresenceOfProperty)[0].value == codes.SCT.Present
    assert abs(ptx.get_measurements(name=codes.DCM.Probability)[0].value - 0.91) < 1e-6
    nod = by_key["chest_xray:nodule"]
    assert nod.get_qualitative_evaluations(name=codes.DCM.PresenceOfProperty)[0].value == codes.SCT.Absent
    texts = {i.ConceptNameCodeSequence[0].CodeValue: i.TextValue for i in ptx[0].ContentSequence if i.ValueType == "TEXT"}
    assert texts["111001"] == "cxr-net" and texts["111003"] == "1.0.0"


def _bytes(ds):
    buf = BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_evidence_references_every_source_and_patient_attributes_are_copied(source):
    ds, _ = build(source, prediction(source))
    refs = [
        sop.ReferencedSOPInstanceUID
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    ]
    assert refs == [source.SOPInstanceUID]
    assert differing_attributes(source, ds) == []
    assert {"PatientID", "AccessionNumber", "IssuerOfPatientID"} <= set(COPIED_ATTRIBUTES)


def test_uids_are_deterministic_and_tracking_uids_survive_a_new_version(source):
    first, _ = build(source, prediction(source))
    again, _ = build(source, prediction(source))
    newer, _ = build(source, prediction(source, version="1.1.0"))
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SOPInstanceUID != newer.SOPInstanceUID

    def tracking(ds):
        groups = hd.sr.Comprehensive3DSR.from_dataset(ds).content.get_image_measurement_groups()
        return {g.tracking_identifier: g.tracking_uid for g in groups}

    assert tracking(first) == tracking(newer)


def test_empty_or_mixed_sources_are_refused(source):
    builder = SRBuilder(SRIdentity("x", 1))
    with pytest.raises(ValueError, match="at least one"):
        builder.build([], prediction(source))
    other = dcmread(get_testdata_file("MR_small.dcm"))
    with pytest.raises(ValueError, match="more than one study"):
        builder.build([source, other], prediction(source))


def test_sr_records_the_order_and_reason_it_fulfils(source):
    """Issue #6: Referenced Request Sequence (PS3.3 C.17.2) with the HL7 reason for study."""
    from core.sr import ReferencedRequest
    from core.types import CodedTerm

    request = ReferencedRequest(
        "Acute chest pain, rule out pneumothorax; " + "x" * 80,
        (CodedTerm("R07.4", "I10", "Chest pain"),),
        CodedTerm("36554-4", "LN", "XR Chest 2 Views"),
        "XR Chest 2 Views",
    )
    sr = SRBuilder(SRIdentity("PACS-AI Bridge", 9900)).build([source], prediction(source), request=request)
    buf = BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    ds = dcmread(BytesIO(buf.getvalue()))
    [item] = ds.ReferencedRequestSequence
    assert item.StudyInstanceUID == source.StudyInstanceUID and item.AccessionNumber == "ACC42"
    assert item.ReasonForTheRequestedProcedure.startswith("Acute chest pain, rule out pneumothorax")
    assert len(item.ReasonForTheRequestedProcedure) == 64  # LO
    assert item.ReasonForRequestedProcedureCodeSequence[0].CodeValue == "R07.4"
    assert item.ReasonForRequestedProcedureCodeSequence[0].CodingSchemeDesignator == "I10"
    assert item.RequestedProcedureCodeSequence[0].CodeValue == "36554-4"
    assert item.RequestedProcedureDescription == "XR Chest 2 Views"
    assert differing_attributes(source, ds) == []
    # without context nothing changes
    plain, _ = build(source, prediction(source))
    assert "ReferencedRequestSequence" not in plain
