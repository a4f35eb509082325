"""Safety checks before a bundle or exported family deploys (issue 17): ``serve.app.build_app``
runs the network once on a blank input and refuses, naming the field, what contradicts its entry.
No Ray: building an application only binds it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from ray.serve import Application

from core.config import FindingSpec, ModelEntry, ModelInputSpec
from core.errors import ConfigError, ModelWeightsError
from models.families import deploy_problems
from models.networks import build_network
from serve.app import build_app
from synthetic.bundles import RADIOGRAPH_BUNDLE, VOLUME_BUNDLE, write_sidecar
from tests.unit.models.bundle_material import copy_bundle, entry_of, make_bundle, make_exported


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deploy")
    three = dataclasses.replace(RADIOGRAPH_BUNDLE, network_outputs=3, output_bias=())
    return {
        "radiograph": make_bundle(root / "radiograph", RADIOGRAPH_BUNDLE),
        "three_outputs": make_bundle(root / "three", three),
        "volume_onnx": make_exported(root / "volume", VOLUME_BUNDLE)[0],
        "volume_spec": make_exported(root / "volume", VOLUME_BUNDLE)[1],
    }


def _refusals(family: str, entry: ModelEntry) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_app(family, entry)
    assert info.value.source == f"models.{family}"
    return info.value.problems


def test_a_bundle_family_with_any_key_is_built(bundles):
    entry = entry_of({"bundle": str(bundles["radiograph"])})
    assert isinstance(build_app("chest_opacity", entry), Application)
    assert deploy_problems("chest_opacity", entry) == []


def test_a_network_with_more_outputs_than_findings_is_refused(bundles):
    entry = entry_of({"bundle": str(bundles["three_outputs"])})
    assert _refusals("opacity", entry) == [
        "models.opacity.findings: the network gives 3 outputs; expected 2, one per declared finding"
    ]


def test_a_planar_family_with_a_3d_input_is_refused_before_loading(bundles):
    entry = entry_of({"bundle": str(bundles["radiograph"])})
    entry = entry.model_copy(update={"input": ModelInputSpec(spatial_size=(16, 64, 64))})
    [problem] = _refusals("opacity", entry)
    assert problem.startswith("models.opacity.input.spatial_size: got [16, 64, 64] for kind planar; expected 2 axes")


@pytest.mark.parametrize(("kind", "size"), [("slices", (16, 32, 32)), ("volume", (32, 32))])
def test_slices_need_2d_and_volumes_3d(bundles, kind, size):
    entry = entry_of({"bundle": str(bundles["radiograph"])}).model_copy(
        update={"kind": kind, "input": ModelInputSpec(spatial_size=size)}
    )
    [problem] = _refusals("opacity", entry)
    assert problem.startswith(f"models.opacity.input.spatial_size: got {list(size)} for kind {kind}")


def test_a_volumetric_network_declared_planar_is_refused_by_the_network(bundles):
    entry = entry_of(
        {
            "spec": str(bundles["volume_spec"]),
            "weights": str(bundles["volume_onnx"]),
            "kind": "planar",
            "input": {"spatial_size": [64, 64]},
        },
        "head",
    )
    [problem] = _refusals("head", entry)
    assert problem.startswith("models.head.input.spatial_size: the network refused a (1, 1, 64, 64) input: ModelError")


def test_probabilities_declared_but_logits_given_are_refused(bundles):
    entry = entry_of({"bundle": str(bundles["radiograph"]), "output_activation": "none"})
    [problem] = _refusals("opacity", entry)
    assert problem.startswith("models.opacity.output_activation: none, but the network gives [4.0, -4.0]")


def test_softmax_over_one_output_is_refused(bundles):
    entry = entry_of(
        {"spec": str(bundles["volume_spec"]), "weights": str(bundles["volume_onnx"]), "output_activation": "softmax"}
    )
    assert _refusals("opacity", entry) == [
        "models.opacity.output_activation: softmax over one output is always 1; expected sigmoid for one finding"
    ]


def test_bundle_preprocessing_that_changes_the_shape_is_refused(bundles, tmp_path):
    bundle = copy_bundle(bundles["radiograph"], tmp_path / "resized")
    config_path = bundle / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["preprocessing"]["transforms"].append({"_target_": "Resized", "keys": "image", "spatial_size": [32, 32]})
    config_path.write_text(json.dumps(config))
    [problem] = _refusals("opacity", entry_of({"bundle": str(bundle), "preprocessing": "bundle"}))
    assert problem.startswith("models.opacity.preprocessing: bundle: ")
    assert "shape (1, 32, 32); expected (1, 64, 64)" in problem


def test_a_network_def_that_cannot_be_built_is_refused(bundles, tmp_path):
    bundle = copy_bundle(bundles["radiograph"], tmp_path / "broken", leave_out=("model.ts", "model.ts.sha256"))
    config_path = bundle / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["network_def"]["_target_"] = "NoSuchNet"
    config_path.write_text(json.dumps(config))
    [problem] = _refusals("opacity", entry_of({"bundle": str(bundle)}))
    assert problem.startswith("models.opacity.bundle: ") and "network_def: cannot be instantiated" in problem


def test_missing_weights_stay_a_weights_error(bundles, tmp_path):
    entry = entry_of({"bundle": str(bundles["radiograph"])}).model_copy(update={"weights": str(tmp_path / "gone.ts")})
    with pytest.raises(ModelWeightsError, match="not found"):
        build_app("opacity", entry)


def test_an_unknown_family_without_kind_is_refused():
    entry = ModelEntry(
        name="x",
        version="1",
        weights="w.pt",
        input=ModelInputSpec(spatial_size=(64, 64)),
        findings=(FindingSpec(key="a"),),
    )
    [problem] = _refusals("mystery", entry)
    assert "got family 'mystery'; expected one of" in problem and "or an entry with kind" in problem


def test_built_in_families_build_without_the_bundle_check(tmp_path):
    entry = ModelEntry(
        name="fx",
        version="1",
        weights=str(tmp_path / "fx.pt"),
        demo=True,  # its sha256 from the sidecar (issue 13: demo weights only)
        input=ModelInputSpec(spatial_size=(64, 64)),
        findings=(FindingSpec(key="limb_fracture"),),
    )
    torch.save(build_network("bone_fracture", entry).state_dict(), tmp_path / "fx.pt")
    write_sidecar(tmp_path / "fx.pt")
    assert isinstance(build_app("bone_fracture", entry), Application)
