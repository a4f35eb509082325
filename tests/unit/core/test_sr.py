from __future__ import annotations

from io import BytesIO

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes

from core.findings import term_for
from core.records import Finding, FrameRef, PlanarRegion, Prediction, QualityFlag, VolumetricRegion
from core.sr import COPIED_ATTRIBUTES, SRBuilder, SRIdentity, differing_attributes


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
    texts = {
        i.ConceptNameCodeSequence[0].CodeValue: i.TextValue for i in ptx[0].ContentSequence if i.ValueType == "TEXT"
    }
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


def _located(source, region=None, flags=()):
    findings = (
        Finding("fracture", term_for("fracture"), 0.8, 0.5, region=region),
        Finding("nodule", term_for("nodule"), 0.1, 0.5),
    )
    return Prediction(
        "bone_fracture", "fx-net", "0.1-demo", findings, (str(source.SOPInstanceUID),), True, quality_flags=tuple(flags)
    )


def _frame(source):
    return FrameRef(str(source.SOPInstanceUID), str(source.SOPClassUID))


def test_planar_region_of_a_positive_finding_references_the_exact_instance_and_frame(source):
    polyline = ((1.0, 2.0), (9.0, 2.0), (9.0, 7.0), (1.0, 7.0), (1.0, 2.0))
    ds, _ = build(source, _located(source, PlanarRegion(_frame(source), polyline, (5.0, 4.0))))
    content = hd.sr.Comprehensive3DSR.from_dataset(ds).content
    assert len(content.get_image_measurement_groups()) == 2  # TID 1501 groups unchanged
    [roi] = content.get_planar_roi_measurement_groups()
    assert roi.finding_type.value == "125605004" and roi.tracking_identifier == "bone_fracture:fracture:region"
    assert roi.roi.GraphicType == "POLYLINE"
    assert roi.roi.value.tolist() == [list(p) for p in polyline]
    assert roi.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert roi.get_qualitative_evaluations(name=codes.DCM.PresenceOfProperty)[0].value == codes.SCT.Present


def test_volumetric_region_is_an_ellipsoid_in_the_frame_of_reference_with_its_frame(source):
    ellipsoid = ((0, 0, 10), (0, 0, -10), (0, 5, 0), (0, -5, 0), (3, 0, 0), (-3, 0, 0))
    region = VolumetricRegion(_frame(source), str(source.FrameOfReferenceUID), ellipsoid, (0, 0, 0))
    ds, _ = build(source, _located(source, region))
    [roi] = hd.sr.Comprehensive3DSR.from_dataset(ds).content.get_volumetric_roi_measurement_groups()
    surface = roi.roi
    assert surface.graphic_type == hd.sr.GraphicTypeValues3D.ELLIPSOID
    assert surface.frame_of_reference_uid == source.FrameOfReferenceUID
    assert np.allclose(surface.graphic_data, ellipsoid)
    [image] = surface.source_images_for_segmentation
    assert image.referenced_sop_instance_uid == source.SOPInstanceUID


def test_quality_flags_become_present_findings_on_their_series(source):
    flag = QualityFlag("motion_artefact", str(source.SeriesInstanceUID), 7.5, 4.0, "moved")
    ds, _ = build(source, _located(source, flags=[flag]))
    groups = hd.sr.Comprehensive3DSR.from_dataset(ds).content.get_image_measurement_groups()
    [motion] = [g for g in groups if g.tracking_identifier.endswith("quality:motion_artefact")]
    assert motion.finding_type.value == "128553"  # (DCM) Patient motion
    assert motion.get_qualitative_evaluations(name=codes.DCM.PresenceOfProperty)[0].value == codes.SCT.Present


def _items(ds):
    [container] = [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    return {i.ConceptNameCodeSequence[0].CodeValue: i for i in container.ContentSequence}


def test_comparison_names_the_prior_and_states_change_per_finding(source, tmp_path):
    from core.interval import comparison_for
    from core.job import PriorLink, PriorStudy
    from core.priors import InstanceRef, PriorStatus

    priors = PriorLink(
        PriorStatus.FOUND,
        study=PriorStudy("1.2.3.4", "20240101", modalities=("CT",)),
        evidence=(InstanceRef("1.2.3.4", "1.2.3.4.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.1.1"),),
    )
    before = prediction(source, probs=(0.2, 0.9))  # pneumothorax new, nodule resolved
    comparison = comparison_for(priors, prediction(source), before, 0.15, 2.0)
    sr = SRBuilder(SRIdentity("PACS-AI Bridge", 9900)).build([source], prediction(source), comparison=comparison)
    buf = BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    ds = dcmread(BytesIO(buf.getvalue()))
    items = _items(ds)
    assert items["122140"].ConceptCodeSequence[0].CodeValue == "373066001"  # Yes
    assert "Prior study 1.2.3.4 of 20240101" in items["121066"].TextValue
    assert ds.PertinentOtherEvidenceSequence[0].StudyInstanceUID == "1.2.3.4"
    groups = {
        g.tracking_identifier: g
        for g in hd.sr.Comprehensive3DSR.from_dataset(ds).content.get_image_measurement_groups()
    }
    name = hd.sr.CodedConcept("111424", "DCM", "Comparison to previous studies")
    assert groups["chest_xray:pneumothorax"].get_qualitative_evaluations(name=name)[0].value.value == "129721008"
    assert groups["chest_xray:nodule"].get_qualitative_evaluations(name=name)[0].value.value == "413322009"
    texts = [
        i.TextValue
        for i in groups["chest_xray:nodule"][0].ContentSequence
        if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "111021"
    ]
    assert texts == ["resolved: probability 0.90 -> 0.12 (-0.78)"]
    dciodvfy = pytest.importorskip("demo.dcmtk").dciodvfy
    path = tmp_path / "sr.dcm"
    path.write_bytes(buf.getvalue())
    try:
        assert dciodvfy(path)[0] == []
    except FileNotFoundError:
        pytest.skip("dciodvfy is installed by `make setup`")


def test_unavailable_priors_are_stated_never_omitted(source):
    from core.interval import comparison_for
    from core.job import PriorLink
    from core.priors import PriorStatus

    comparison = comparison_for(
        PriorLink(PriorStatus.UNAVAILABLE, "pacs unavailable: refused"), prediction(source), None, 0.15, 2.0
    )
    ds, _ = build_with(source, comparison=comparison)
    items = _items(ds)
    assert items["122140"].ConceptCodeSequence[0].CodeValue == "373067005"  # No
    assert items["121066"].TextValue.startswith("Priors were not available")
    assert "PertinentOtherEvidenceSequence" not in ds
    plain, _ = build(source, prediction(source))  # without a comparison: as before issue #5
    assert not [i for i in plain.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"]


def test_a_later_version_names_its_predecessor(source):
    first, _ = build(source, prediction(source))
    newer, _ = build_with(source, previous_versions=[first])
    [study] = newer.PredecessorDocumentsSequence
    ref = study.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert (study.StudyInstanceUID, ref.ReferencedSOPInstanceUID) == (first.StudyInstanceUID, first.SOPInstanceUID)


def build_with(source, **kw):
    sr = SRBuilder(SRIdentity("PACS-AI Bridge", 9900)).build([source], prediction(source), **kw)
    buf = BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return dcmread(buf), sr


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


def _sources_of(group):
    return [
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for i in group[0].ContentSequence
        if i.ValueType == "IMAGE" and i.ConceptNameCodeSequence[0].CodeValue == "121112"
    ]  # Source of Measurement


def test_groups_list_their_sources_only_up_to_the_cap_the_evidence_always_all(source):
    """A 400-slice CT must not repeat 400 references per finding; the evidence keeps them all."""
    from copy import deepcopy

    slices = []
    for n in range(3):
        ds = deepcopy(source)
        ds.SOPInstanceUID = f"{source.SOPInstanceUID}.{n + 1}"
        slices.append(ds)
    pred = Prediction(
        "chest_xray",
        "cxr-net",
        "1",
        prediction(source).findings,
        tuple(str(s.SOPInstanceUID) for s in slices),
        demo=True,
    )
    for cap, listed in ((3, 3), (2, 0)):
        sr = SRBuilder(SRIdentity("PACS-AI Bridge", 9900, group_source_images_max=cap)).build(slices, pred)
        groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
        assert [len(_sources_of(g)) for g in groups] == [listed, listed]
        evidence = {
            sop.ReferencedSOPInstanceUID
            for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for sop in series.ReferencedSOPSequence
        }
        assert evidence == {str(s.SOPInstanceUID) for s in slices}
