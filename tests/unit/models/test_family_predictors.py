"""Every family's predictor: all findings, the evidence frame, and regions and heatmaps of
positive findings that point into the right instance, frame and frame of reference."""

from __future__ import annotations

import random
from io import BytesIO

import numpy as np
import pytest
import torch

from core.codec import dump_record, load_record
from core.config import FindingSpec, ModelEntry, ModelInputSpec
from core.records import Geometry, InferenceRequest, Prediction, VolumetricRegion
from models.families import PREDICTORS, load_predictor
from models.networks import build_network
from synthetic.head_phantoms import HEAD_CT_FINDINGS
from synthetic.synthetic_series import to_enhanced
from synthetic.synthetic_studies import (
    brain_mr_study,
    chest_cta_study,
    fracture_study,
    head_ct_study,
)

SPECS = {
    "bone_fracture": (ModelInputSpec(spatial_size=(64, 64)), ("limb_fracture",)),
    "head_ct_haemorrhage": (ModelInputSpec(spatial_size=(32, 32), window=(40.0, 80.0)), HEAD_CT_FINDINGS),
    "brain_mri_tumour": (ModelInputSpec(spatial_size=(16, 24, 24)), ("brain_tumour",)),
    "chest_cta": (ModelInputSpec(spatial_size=(16, 32, 32), window=(150.0, 700.0)), ("aortic_dissection",)),
}
"""Small inputs: the predictors' plumbing, not the models' accuracy, is under test here."""


def _entry(family: str, threshold: float = 0.0) -> ModelEntry:
    spec, keys = SPECS[family]
    findings = tuple(FindingSpec(key=k, threshold=threshold) for k in keys)
    return ModelEntry(
        name=f"{family}-unit", version="0-test", weights="unused.pt", demo=True, input=spec, findings=findings
    )


def _predictor(family: str, threshold: float = 0.0) -> object:
    torch.manual_seed(0)
    entry = _entry(family, threshold)
    return PREDICTORS[family](entry, build_network(family, entry).eval(), family)


def _request(family: str, datasets: list) -> InferenceRequest:
    instances = []
    for ds in datasets:
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        instances.append((str(ds.SOPInstanceUID), buffer.getvalue()))
    return InferenceRequest(str(datasets[0].StudyInstanceUID), family, tuple(instances))


STUDIES = {
    "bone_fracture": lambda: fracture_study(1, True, size=96),
    "head_ct_haemorrhage": lambda: head_ct_study(2, {4: ["intraparenchymal"]}, n_slices=8, size=48),
    "brain_mri_tumour": lambda: brain_mr_study(3, True, shape=(16, 32, 32), spacing=(8.0, 6.0, 6.0)),
    "chest_cta": lambda: chest_cta_study(4, True, shape=(16, 32, 32), spacing=(10.0, 7.0, 7.0)),
}


@pytest.mark.parametrize("family", sorted(SPECS))
def test_positive_findings_are_localised_in_the_study(family: str) -> None:
    study = STUDIES[family]()
    output = _predictor(family).predict(_request(family, study.datasets))
    prediction = output.prediction
    uids = {str(ds.SOPInstanceUID) for ds in study.datasets}
    assert [f.key for f in prediction.findings] == list(SPECS[family][1])
    assert set(prediction.source_uids) == uids
    assert prediction == load_record(Prediction, dump_record(prediction))
    located = {f.key: f.region for f in prediction.findings if f.region is not None}
    assert set(located) == {h.finding for h in output.heatmaps} == set(SPECS[family][1])
    for region in located.values():
        assert region.frame.sop_instance_uid in uids
        if isinstance(region, VolumetricRegion):
            assert region.geometry is Geometry.VOLUMETRIC
            assert region.frame_of_reference_uid == str(study.datasets[0].FrameOfReferenceUID)
            assert np.asarray(region.ellipsoid).shape == (6, 3)
        else:
            assert region.geometry is Geometry.PLANAR
            assert np.asarray(region.polyline).shape == (5, 2)
    assert all(f.evidence is not None and f.evidence.sop_instance_uid in uids for f in prediction.findings)
    for heatmap in output.heatmaps:  # the grid matches the region's geometry: one vocabulary
        assert heatmap.grid.geometry is located[heatmap.finding].geometry


def test_negative_findings_get_no_heatmap_and_heatmaps_can_be_switched_off() -> None:
    study = STUDIES["bone_fracture"]()
    output = _predictor("bone_fracture", threshold=1.0).predict(_request("bone_fracture", study.datasets))
    assert all(f.region is None for f in output.prediction.findings) and output.heatmaps == ()
    entry = _entry("bone_fracture").model_copy(update={"heatmaps": False})
    quiet = PREDICTORS["bone_fracture"](entry, build_network("bone_fracture", entry).eval())
    assert quiet.predict(_request("bone_fracture", study.datasets)).heatmaps == ()


def test_slice_order_and_encoding_of_the_series_do_not_change_the_result() -> None:
    study = head_ct_study(7, {5: ["subdural"]}, n_slices=10, size=48)
    predictor = _predictor("head_ct_haemorrhage")
    shuffled = study.datasets[:]
    random.Random(3).shuffle(shuffled)
    enhanced = to_enhanced(study.datasets, frame_order=[3, 9, 0, 5, 1, 8, 2, 7, 4, 6])
    results = [
        predictor.predict(_request("head_ct_haemorrhage", d)).prediction for d in (study.datasets, shuffled, [enhanced])
    ]
    probs = np.array([[f.probability for f in r.findings] for r in results])
    assert np.abs(probs - probs[0]).max() < 1e-6
    # the evidence of the single-frame and the multi-frame runs is the same slice
    by_uid = {str(d.SOPInstanceUID): k for k, d in enumerate(study.datasets)}
    order = [3, 9, 0, 5, 1, 8, 2, 7, 4, 6]
    for single, multi in zip(results[0].findings, results[2].findings, strict=True):
        assert single.evidence is not None and multi.evidence is not None
        frame = multi.evidence.frame_number
        assert order[frame - 1] == by_uid[single.evidence.sop_instance_uid]


def test_load_predictor_names_the_known_families(tmp_path: object) -> None:
    from core.errors import ModelError

    with pytest.raises(ModelError, match="bone_fracture"):
        load_predictor("knee_mri", _entry("bone_fracture"))
