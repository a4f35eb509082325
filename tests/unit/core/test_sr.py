from __future__ import annotations

from io import BytesIO

import highdicom as hd
import numpy as np
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


def _located(source, extra):
    findings = (Finding("fracture", term_for("fracture"), 0.8, 0.5), Finding("nodule", term_for("nodule"), 0.1, 0.5))
    return Prediction("bone_fracture", "fx-net", "0.1-demo", findings, (str(source.SOPInstanceUID),), True, extra)


def test_planar_region_of_a_positive_finding_references_the_exact_instance_and_frame(source):
    location = {"kind": "planar", "sop_instance_uid": str(source.SOPInstanceUID),
                "sop_class_uid": str(source.SOPClassUID), "frame_number": None,
                "polyline": [[1.0, 2.0], [9.0, 2.0], [9.0, 7.0], [1.0, 7.0], [1.0, 2.0]]}
    ds, _ = build(source, _located(source, {"locations": {"fracture": location}}))
    content = hd.sr.Comprehensive3DSR.from_dataset(ds).content
    assert len(content.get_image_measurement_groups()) == 2  # TID 1501 groups unchanged
    [roi] = content.get_planar_roi_measurement_groups()
    assert roi.finding_type.value == "125605004" and roi.tracking_identifier == "bone_fracture:fracture:region"
    assert roi.roi.GraphicType == "POLYLINE"
    assert roi.roi.value.tolist() == location["polyline"]
    assert roi.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert roi.get_qualitative_evaluations(name=codes.DCM.PresenceOfProperty)[0].value == codes.SCT.Present


def test_volumetric_region_is_an_ellipsoid_in_the_frame_of_reference_with_its_frame(source):
    ellipsoid = [[0, 0, 10], [0, 0, -10], [0, 5, 0], [0, -5, 0], [3, 0, 0], [-3, 0, 0]]
    location = {"kind": "volumetric", "sop_instance_uid": str(source.SOPInstanceUID),
                "sop_class_uid": str(source.SOPClassUID), "frame_number": None,
                "frame_of_reference_uid": str(source.FrameOfReferenceUID), "ellipsoid": ellipsoid}
    ds, _ = build(source, _located(source, {"locations": {"fracture": location}}))
    [roi] = hd.sr.Comprehensive3DSR.from_dataset(ds).content.get_volumetric_roi_measurement_groups()
    surface = roi.roi
    assert surface.graphic_type == hd.sr.GraphicTypeValues3D.ELLIPSOID
    assert surface.frame_of_reference_uid == source.FrameOfReferenceUID
    assert np.allclose(surface.graphic_data, ellipsoid)
    [image] = surface.source_images_for_segmentation
    assert image.referenced_sop_instance_uid == source.SOPInstanceUID


def test_quality_flags_become_present_findings_on_their_series(source):
    flag = {"key": "motion_artefact", "series_instance_uid": str(source.SeriesInstanceUID),
            "score": 7.5, "threshold": 4.0, "detail": "moved"}
    ds, _ = build(source, _located(source, {"quality_flags": [flag]}))
    groups = hd.sr.Comprehensive3DSR.from_dataset(ds).content.get_image_measurement_groups()
    [motion] = [g for g in groups if g.tracking_identifier.endswith("quality:motion_artefact")]
    assert motion.finding_type.value == "128553"  # (DCM) Patient motion
    assert motion.get_qualitative_evaluations(name=codes.DCM.PresenceOfProperty)[0].value == codes.SCT.Present
