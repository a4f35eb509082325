"""Issue #3 end to end: every model family through storescu -> listener -> Ray Serve -> SR and
Parametric Map -> a real Orthanc; geometry that is right; results independent of encoding."""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage, ParametricMapStorage

from demo.dcmtk import dciodvfy
from synthetic.head_phantoms import Bleed
from synthetic.synthetic_dicom import make_cxr_study, save_study, synthetic_uid
from synthetic.synthetic_series import LOSSLESS_SYNTAXES, encode, to_enhanced
from synthetic.synthetic_studies import (
    SyntheticStudy,
    brain_mr_study,
    chest_cta_study,
    fracture_study,
    head_ct_study,
)
from tests.integration.conftest import (
    ledger_of,
    needs_peers,
    pacs_outputs,
    send_files,
    wait_for_states,
)

pytestmark = [pytest.mark.integration, needs_peers]

BIG_BLEED = Bleed("intraparenchymal", angle=0.5, extent=0.0, depth=0.0, x=-0.35, y=0.1, radius=0.4, hu=76.0)
"""A large clot in the left hemisphere: obvious on its slice, absent on every other."""


def _cxr(seed: int) -> SyntheticStudy:
    datasets = make_cxr_study(seed, frozenset({"effusion"}), patient_id=f"P{seed}", accession=f"A{seed}")
    return SyntheticStudy(datasets, frozenset({"effusion"}), np.zeros((1, 1), bool), np.zeros(1))


CASES: dict[str, tuple[Any, str]] = {
    "chest_xray": (lambda: _cxr(301), "effusion"),
    "bone_fracture": (lambda: fracture_study(302, True), "limb_fracture"),
    "head_ct_haemorrhage": (
        lambda: head_ct_study(303, {k: [BIG_BLEED] for k in (10, 11, 12)}, n_slices=24),
        "any_haemorrhage",
    ),
    "brain_mri_tumour": (lambda: brain_mr_study(304, True), "brain_tumour"),
    "chest_cta": (lambda: chest_cta_study(305, True), "aortic_dissection"),
}


def _save(datasets: list[Any], directory: Path) -> list[Path]:
    return save_study(datasets, directory)


def _text_items(group: Any) -> dict[str, str]:
    return {
        i.ConceptNameCodeSequence[0].CodeValue: i.TextValue for i in group[0].ContentSequence if i.ValueType == "TEXT"
    }


def _valid(ds: Any, path: Path) -> None:
    ds.save_as(path, enforce_file_format=True)
    errors, _ = dciodvfy(path)
    assert errors == [], (ds.SOPClassUID, errors)


def _region_groups(sr: Any) -> list[Any]:
    content = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    return content.get_planar_roi_measurement_groups() + content.get_volumetric_roi_measurement_groups()


@pytest.mark.parametrize("family", sorted(CASES))
def test_each_family_reports_sr_and_heatmap_that_orthanc_accepts(tmp_path, orthanc, make_pipeline, family):
    pipeline, cfg = make_pipeline(orthanc)
    make, key = CASES[family]
    study = make()
    send_files(_save(study.datasets, tmp_path / "in"), pipeline, cfg)
    ledger = ledger_of(pipeline)
    assert wait_for_states(ledger, [study.study_uid], {"delivered"}, timeout_s=240), ledger.status.report(time.time())

    outputs = pacs_outputs(orthanc, study.study_uid)
    [sr] = outputs[Comprehensive3DSRStorage]
    maps = outputs[ParametricMapStorage]
    _valid(sr, tmp_path / "sr.dcm")
    for n, pm in enumerate(maps):
        _valid(pm, tmp_path / f"pm{n}.dcm")
    entry = cfg.models[family]
    source_uids = {str(d.SOPInstanceUID) for d in study.datasets}
    groups = {
        g.tracking_identifier: g
        for g in hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
    }
    finding = groups[f"{family}:{key}"]
    probability = finding.get_measurements(name=codes.DCM.Probability)[0].value
    threshold = next(f.threshold for f in entry.findings if f.key == key)
    assert probability >= threshold, (family, key, probability)
    assert finding.get_qualitative_evaluations(name=codes.DCM.PresenceOfProperty)[0].value == codes.SCT.Present
    assert _text_items(finding)["111003"] == entry.version and "DEMO" in sr.SeriesDescription
    [region] = [g for g in _region_groups(sr) if g.tracking_identifier == f"{family}:{key}:region"]
    referenced = {
        r.ReferencedSOPInstanceUID for item in region[0].ContentSequence for r in item.get("ReferencedSOPSequence", [])
    } | {
        r.ReferencedSOPInstanceUID
        for item in region[0].ContentSequence
        for child in item.get("ContentSequence", [])
        for r in child.get("ReferencedSOPSequence", [])
    }
    assert referenced and referenced <= source_uids
    [pm] = [m for m in maps if m.ContentDescription == f"Grad-CAM {key}"]
    pm_refs = {i.ReferencedSOPInstanceUID for s in pm.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert pm_refs and pm_refs <= source_uids and pm.StudyInstanceUID == study.study_uid
    [job] = ledger.jobs.for_study(study.study_uid)
    assert {i.item.kind for i in ledger.outbox.items(job.job_id)} == {"sr", "pm"}
    assert len(ledger.jobs.raw_record(job.job_id)) < 64 * 1024  # heatmaps are blobs, not row data
    assert set(ledger.intake.states(study.study_uid).values()) == {"reported"}


def _geometry_study() -> SyntheticStudy:
    return head_ct_study(347, {47: [BIG_BLEED]}, n_slices=120, size=64, patient_id="GEO47")


@pytest.mark.parametrize("packaging", ["shuffled_single_frames", "one_enhanced_multiframe"])
def test_lesion_in_slice_47_is_referenced_and_the_heatmap_peaks_inside_it(tmp_path, orthanc, make_pipeline, packaging):
    pipeline, cfg = make_pipeline(orthanc)
    study = _geometry_study()
    slice_47 = study.datasets[47]
    order = list(range(120))
    random.Random(47).shuffle(order)
    if packaging == "shuffled_single_frames":
        datasets = [copy.deepcopy(study.datasets[k]) for k in order]
        for n, ds in enumerate(datasets):
            ds.InstanceNumber = n + 1  # arrival order, not position: a trap for ordering by number
        files = [p for ds in datasets for p in _save([ds], tmp_path / "in")]
    else:
        files = _save([to_enhanced(study.datasets, frame_order=order)], tmp_path / "in")
    send_files(files, pipeline, cfg, own_syntax=True)  # storescu's default list lacks Legacy Enhanced CT
    ledger = ledger_of(pipeline)
    assert wait_for_states(ledger, [study.study_uid], {"delivered"}, timeout_s=300), ledger.status.report(time.time())

    outputs = pacs_outputs(orthanc, study.study_uid)
    [sr] = outputs[Comprehensive3DSRStorage]
    [region] = [g for g in _region_groups(sr) if g.tracking_identifier == "head_ct_haemorrhage:any_haemorrhage:region"]
    source = region.roi.ContentSequence[0]
    ref = source.ReferencedSOPSequence[0]
    if packaging == "shuffled_single_frames":
        assert ref.ReferencedSOPInstanceUID == slice_47.SOPInstanceUID
    else:
        assert order[int(ref.ReferencedFrameNumber) - 1] == 47  # the frame that holds slice 47
    [pm] = [m for m in outputs[ParametricMapStorage] if m.ContentDescription == "Grad-CAM any_haemorrhage"]
    [frame] = pm.PerFrameFunctionalGroupsSequence
    position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
    assert position == pytest.approx([float(v) for v in slice_47.ImagePositionPatient], abs=1e-3)
    heat = pm.pixel_array
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert study.lesion_mask[47][peak], (peak, np.argwhere(study.lesion_mask[47]).mean(axis=0))


def _relabel(datasets: list[Any], tag: str) -> list[Any]:
    """The same pixels under new UIDs (the listener rightly ignores a re-sent SOP Instance)."""
    new: dict[str, str] = {}
    out = []
    for ds in datasets:
        copied = copy.deepcopy(ds)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            if keyword in copied:
                old = str(copied.data_element(keyword).value)
                setattr(copied, keyword, new.setdefault(old, synthetic_uid(old, tag)))
        copied.file_meta.MediaStorageSOPInstanceUID = copied.SOPInstanceUID
        out.append(copied)
    return out


def test_every_lossless_transfer_syntax_gives_the_same_probabilities(tmp_path, make_pipeline):
    pipeline, cfg = make_pipeline(None)  # no PACS needed: the predictions are in the ledger
    head = head_ct_study(360, {k: ["subdural"] for k in (8, 9, 10)}, n_slices=16)
    limb = fracture_study(361, True)
    studies: dict[str, dict[str, str]] = {}
    for n, syntax in enumerate(LOSSLESS_SYNTAXES):
        for name, source in (("head_ct_haemorrhage", head), ("bone_fracture", limb)):
            variant = _relabel(source.datasets, f"ts{n}")
            folder = tmp_path / f"{name}-{n}"
            folder.mkdir()
            files = []
            for ds in variant:
                path = folder / f"{ds.SOPInstanceUID}.dcm"
                path.write_bytes(encode(ds, syntax))
                files.append(path)
            send_files(files, pipeline, cfg, own_syntax=syntax)
            studies.setdefault(name, {})[syntax] = str(variant[0].StudyInstanceUID)
    ledger = ledger_of(pipeline)
    uids = [uid for per in studies.values() for uid in per.values()]
    assert wait_for_states(ledger, uids, {"written", "delivered"}, timeout_s=300), ledger.status.report(time.time())
    for name, per_syntax in studies.items():
        probabilities = []
        for syntax, uid in per_syntax.items():
            [job] = ledger.jobs.for_study(uid)
            assert {i.transfer_syntax_uid for i in ledger.intake.job_instances(job.job_id)} == {syntax}
            [prediction] = [p for p in job.record.inference.predictions if p.family == name]
            probabilities.append([f.probability for f in prediction.findings])
        spread = np.ptp(np.array(probabilities), axis=0).max()
        assert spread <= 1e-6, (name, spread, probabilities)
