"""Families from MONAI bundles and exported networks (issue 17): the predictor of each weights
format gives the torch network's probabilities, with the declared codes, activation and
preprocessing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydicom import dcmread

from core.errors import ModelError, ModelWeightsError
from core.records import InferenceRequest
from core.sr import SRBuilder, SRIdentity
from core.types import CodedTerm
from models.bundles import OnnxNetwork
from models.families import load_predictor
from models.predictor import RadiographPredictor
from models.preprocessing import grayscale_pixels, resize
from models.volume_predictor import SlicePredictor, VolumePredictor
from synthetic.bundles import RADIOGRAPH_BUNDLE, VOLUME_BUNDLE
from synthetic.synthetic_dicom import make_cxr_study
from synthetic.synthetic_studies import head_ct_study
from tests.unit.models.bundle_material import (
    build_network,
    copy_bundle,
    entry_of,
    export_onnx,
    make_bundle,
    make_exported,
)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One radiograph bundle per weights format, and a bare ONNX export with its spec."""
    root = tmp_path_factory.mktemp("bundles")
    onnx, spec = make_exported(root / "exported", RADIOGRAPH_BUNDLE)
    return {
        "ts": make_bundle(root / "ts", RADIOGRAPH_BUNDLE, "ts"),
        "pt": make_bundle(root / "pt", RADIOGRAPH_BUNDLE, "pt"),
        "onnx": make_bundle(root / "onnx", RADIOGRAPH_BUNDLE, "onnx"),
        "onnx_file": onnx,
        "spec": spec,
    }


def _request(datasets: list, family: str = "opacity") -> InferenceRequest:
    instances = []
    for ds in datasets:
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        instances.append((str(ds.SOPInstanceUID), buffer.getvalue()))
    return InferenceRequest(str(datasets[0].StudyInstanceUID), family, tuple(instances))


ENTRIES = {
    "ts": lambda m: {"bundle": str(m["ts"])},
    "pt": lambda m: {"bundle": str(m["pt"])},
    "onnx": lambda m: {"bundle": str(m["onnx"])},
    "spec": lambda m: {"spec": str(m["spec"]), "weights": str(m["onnx_file"])},
}


@pytest.mark.parametrize("source", sorted(ENTRIES))
def test_every_format_gives_the_torch_networks_probabilities(material, source):
    entry = entry_of(ENTRIES[source](material))
    predictor = load_predictor("opacity", entry)
    assert type(predictor) is RadiographPredictor and predictor.family == "opacity"
    request = _request(make_cxr_study(3, frozenset({"effusion"}), n_images=2, size=96))
    prepared = predictor.prepare(request)
    with torch.inference_mode():
        expected = torch.sigmoid(build_network(RADIOGRAPH_BUNDLE)(torch.from_numpy(prepared.inputs))).numpy()
    np.testing.assert_allclose(predictor.forward(prepared.inputs), expected, atol=1e-5, rtol=0)


def test_the_network_of_each_format(material):
    kinds = {
        "ts": torch.jit.ScriptModule,
        "pt": torch.nn.Module,
        "onnx": OnnxNetwork,
        "spec": OnnxNetwork,
    }
    for source, kind in kinds.items():
        entry = entry_of(ENTRIES[source](material))
        assert isinstance(load_predictor("opacity", entry)._network, kind), source
    assert entry_of(ENTRIES["pt"](material)).weights.endswith("models/model.pt")


def test_findings_carry_the_declared_codes_into_the_sr(material):
    predictor = load_predictor("opacity", entry_of(ENTRIES["ts"](material)))
    study = make_cxr_study(4, frozenset({"effusion"}), size=96)
    output = predictor.predict(_request(study))
    effusion, nodule = output.prediction.findings
    assert (effusion.present, nodule.present) == (True, False)  # the design's output biases
    assert effusion.term == CodedTerm("RID34539", "RADLEX", "Pleural effusion")  # not the catalogue's SCT code
    assert nodule.term == CodedTerm("27925004", "SCT", "Nodule") and nodule.critical
    assert output.heatmaps == ()  # bundle entries default to heatmaps: false
    sr = SRBuilder(SRIdentity("PACS-AI Bridge", 9900)).build(study, output.prediction)
    buffer = BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    codes = set(_codes(dcmread(BytesIO(buffer.getvalue()))))
    assert ("RID34539", "RADLEX", "Pleural effusion") in codes
    assert ("60046008", "SCT", "Pleural effusion") not in codes


def _codes(ds: Any) -> Any:
    for item in ds.get("ContentSequence", []):
        for keyword in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            for code in item.get(keyword, []):
                yield (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning)
        yield from _codes(item)


class _Fixed(torch.nn.Module):
    """A network that gives the same outputs for every input."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = torch.tensor(values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.values.expand(x.shape[0], -1)


@pytest.mark.parametrize(
    ("activation", "outputs", "expected"),
    [
        ("sigmoid", [0.0, 2.0], [0.5, 0.880797]),
        ("softmax", [0.0, 2.0], [0.119203, 0.880797]),
        ("none", [0.25, 0.75], [0.25, 0.75]),
    ],
)
def test_output_activation_turns_outputs_into_probabilities(material, activation, outputs, expected):
    entry = entry_of(ENTRIES["ts"](material)).model_copy(update={"output_activation": activation})
    predictor = RadiographPredictor(entry, _Fixed(outputs), family="opacity")
    probs = predictor.forward(np.zeros((2, 1, 64, 64), np.float32))
    np.testing.assert_allclose(probs, [expected, expected], atol=1e-6)


def test_bundle_preprocessing_replaces_the_window_after_resizing(material):
    entry = entry_of({"bundle": str(material["ts"]), "preprocessing": "bundle"})
    predictor = load_predictor("opacity", entry)
    study = make_cxr_study(5, size=96)
    prepared = predictor.prepare(_request(study))
    # the bundle's ScaleIntensityRanged (0..4095 -> 0..1), its LoadImaged and EnsureChannelFirstd skipped
    expected = np.clip(resize(grayscale_pixels(study[0]), (64, 64)) / 4095.0, 0.0, 1.0)
    np.testing.assert_allclose(prepared.inputs[0, 0], expected, atol=1e-6)
    assert prepared.inputs.shape == (1, 1, 64, 64)


def test_bundle_preprocessing_that_changes_the_shape_is_refused(material, tmp_path):
    bundle = copy_bundle(material["ts"], tmp_path / "resized")
    config_path = bundle / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["preprocessing"]["transforms"].insert(2, {"_target_": "Resized", "keys": "image", "spatial_size": [48, 48]})
    config_path.write_text(json.dumps(config))
    predictor = load_predictor("opacity", entry_of({"bundle": str(bundle), "preprocessing": "bundle"}))
    with pytest.raises(ModelError, match=r"shape \(1, 48, 48\); expected \(1, 64, 64\)"):
        predictor.prepare(_request(make_cxr_study(6, size=96)))


def test_onnx_runs_any_batch_size_even_when_exported_with_a_fixed_one(material, tmp_path):
    network = build_network(RADIOGRAPH_BUNDLE)
    fixed = export_onnx(network, tmp_path / "fixed.onnx", RADIOGRAPH_BUNDLE, fixed_batch=2)
    batch = torch.from_numpy(np.random.default_rng(0).random((5, 1, 64, 64), dtype=np.float32))
    with torch.inference_mode():
        expected = network(batch).numpy()
    for path in (material["onnx_file"], fixed):
        np.testing.assert_allclose(OnnxNetwork(path)(batch).numpy(), expected, atol=1e-5, rtol=0)


def test_onnx_names_the_shape_it_refuses(material):
    with pytest.raises(ModelError, match=r"refused an input of shape \(1, 1, 32, 32, 32\)"):
        OnnxNetwork(material["onnx_file"])(torch.zeros(1, 1, 32, 32, 32))


def test_a_changed_bundle_weights_file_is_refused_by_its_sha256(material, tmp_path):
    bundle = copy_bundle(material["ts"], tmp_path / "tampered")
    (bundle / "models" / "model.ts").write_bytes((bundle / "models" / "model.ts").read_bytes() + b"\0")
    with pytest.raises(ModelWeightsError, match="has sha256"):
        load_predictor("opacity", entry_of({"bundle": str(bundle)}))


def test_a_state_dict_without_a_bundle_is_refused_by_name(material, tmp_path):
    weights = tmp_path / "bare.pt"
    weights.write_bytes((material["pt"] / "models" / "model.pt").read_bytes())
    entry = entry_of({"spec": str(material["spec"]), "weights": str(weights)})
    entry = entry.model_copy(update={"sha256": _sha256(weights)})
    with pytest.raises(ModelError, match="needs the network's definition"):
        load_predictor("opacity", entry)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_heatmaps_asked_of_a_torchscript_bundle_are_skipped_with_a_warning(material, caplog):
    entry = entry_of({"bundle": str(material["ts"]), "heatmaps": True})
    with caplog.at_level(logging.WARNING, logger="models.predictor"):
        output = load_predictor("opacity", entry).predict(_request(make_cxr_study(7, size=96)))
    assert output.heatmaps == () and output.prediction.findings[0].present
    assert "no heatmaps" in caplog.text


def test_a_state_dict_bundle_has_heatmaps_when_asked(material):
    entry = entry_of({"bundle": str(material["pt"]), "heatmaps": True})
    output = load_predictor("opacity", entry).predict(_request(make_cxr_study(8, size=96)))
    assert [h.finding for h in output.heatmaps] == ["effusion"]


@pytest.mark.parametrize(("kind", "cls"), [("slices", SlicePredictor), ("volume", VolumePredictor)])
def test_the_kind_chooses_the_generic_predictor(material, kind, cls, tmp_path):
    design = VOLUME_BUNDLE if kind == "volume" else dataclasses.replace(RADIOGRAPH_BUNDLE, kind="slices")
    onnx, spec = make_exported(tmp_path, design)
    window = {"spatial_size": list(design.spatial_shape), "window": [40, 80]}  # the entry's input wins
    entry = entry_of({"spec": str(spec), "weights": str(onnx), "input": window}, "head")
    predictor = load_predictor("head", entry)
    assert type(predictor) is cls and predictor.family == "head"
    study = head_ct_study(1, {8: ["subdural"]}, n_slices=12, size=48).datasets
    output = predictor.predict(_request(study, "head"))
    assert [f.key for f in output.prediction.findings] == [f["key"] for f in design.findings]
    assert output.prediction.family == "head"
