"""Issue 17 in the config: a bundle or spec entry is filled from its files (``core.bundles``),
every refusal is named, versions inherit from their family, traffic is bounded, and a routing
rule never sends a model what it cannot take (``core.config._route_problems``).

The bundles are real: ``monai.bundle.init_bundle`` in tmp_path, then the metadata edited."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.bundles import expand_models
from core.config import ModelEntry, TrafficConfig, parse_config
from core.errors import ConfigError
from synthetic.bundles import RADIOGRAPH_BUNDLE, VOLUME_BUNDLE, metadata
from tests.unit.models.bundle_material import copy_bundle, make_bundle, make_exported

SHA = "a" * 64


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A radiograph bundle with TorchScript weights (``init_bundle`` + ``ckpt_export``)."""
    return make_bundle(tmp_path_factory.mktemp("core-bundles") / "radiograph", RADIOGRAPH_BUNDLE)


def _expand(models: dict[str, Any]) -> dict[str, Any]:
    raw = {"models": models}
    return expand_models(raw, lambda f: Path(f).read_text(encoding="utf-8"), lambda f: Path(f).is_file(), "site.yaml")


def _problems(models: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _expand(models)
    assert info.value.source == "site.yaml"
    return info.value.problems


def _edited(bundle: Path, target: Path, edit: Any, leave_out: tuple[str, ...] = ()) -> Path:
    copy = copy_bundle(bundle, target, leave_out)
    path = copy / "configs" / "metadata.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    return copy


def test_a_bundle_entry_is_filled_from_its_metadata(bundle):
    models = _expand({"opacity": {"bundle": str(bundle), "serve": {"max_batch_size": 4}}})
    entry = ModelEntry.model_validate(models["models"]["opacity"])
    assert (entry.name, entry.version, entry.manufacturer) == ("chest_opacity_bundle", "1.2.0", "PACS-AI Bridge tests")
    assert entry.weights == str(bundle / "models" / "model.ts")
    assert entry.input.spatial_size == (64, 64) and entry.input.channels == 1
    assert (entry.kind, entry.modalities, entry.body_parts) == ("planar", ("DX", "CR"), ("CHEST",))
    assert entry.heatmaps is False and entry.output_activation == "sigmoid" and entry.serve.max_batch_size == 4
    assert entry.demo  # untrained: its SRs say they are not clinical
    assert [(f.key, f.code.scheme, f.code.value, f.critical) for f in entry.findings] == [
        ("effusion", "RADLEX", "RID34539", False),
        ("nodule", "SCT", "27925004", True),
    ]
    assert entry.card.license == "Apache-2.0" and entry.card.intended_use.startswith("Software tests")
    assert entry.card.references and "auc" in entry.card.performance


def test_the_entry_adjusts_a_declared_finding_by_key_but_not_the_order(bundle):
    models = _expand({"opacity": {"bundle": str(bundle), "findings": [{"key": "nodule", "threshold": 0.2}]}})
    entry = ModelEntry.model_validate(models["models"]["opacity"])
    assert [(f.key, f.threshold) for f in entry.findings] == [("effusion", 0.5), ("nodule", 0.2)]
    assert entry.findings[1].code is not None


def test_the_weights_are_looked_for_as_ts_then_onnx_then_pt(bundle, tmp_path):
    pt_only = copy_bundle(bundle, tmp_path / "pt", leave_out=("model.ts", "model.ts.sha256"))
    models = _expand({"a": {"bundle": str(bundle)}, "b": {"bundle": str(pt_only)}})
    assert models["models"]["a"]["weights"].endswith("models/model.ts")
    assert models["models"]["b"]["weights"].endswith("models/model.pt")


def test_the_licence_file_stands_in_for_a_missing_licence(bundle, tmp_path):
    def drop(meta: dict[str, Any]) -> None:
        meta.pop("license")
        meta.pop("copyright")

    copy = _edited(bundle, tmp_path / "b", drop)
    (copy / "LICENSE").write_text("\nMIT License\n\nPermission is hereby granted\n")
    entry = ModelEntry.model_validate(_expand({"x": {"bundle": str(copy)}})["models"]["x"])
    assert entry.card.license == "MIT License"


def _drop_code(meta: dict[str, Any]) -> None:
    del meta["pacsai"]["findings"][1]["code"]


def _three_outputs(meta: dict[str, Any]) -> None:
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 3


def _any_size(meta: dict[str, Any]) -> None:
    meta["network_data_format"]["inputs"]["image"]["spatial_shape"] = ["16*n", "16*n"]


def _no_section(meta: dict[str, Any]) -> None:
    del meta["pacsai"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_drop_code, "pacsai.findings.1.code: missing; expected {scheme, value, meaning}"),
        (
            _three_outputs,
            "network_data_format.outputs.pred.num_channels: got 3; expected 2, one per finding in pacsai.findings",
        ),
        (_any_size, "network_data_format.inputs.image.spatial_shape: got ['16*n', '16*n']; expected fixed"),
        (_no_section, "pacsai: missing; expected a section with kind, modalities"),
    ],
)
def test_every_metadata_refusal_names_the_file_and_field(bundle, tmp_path, edit, expected):
    copy = _edited(bundle, tmp_path / "b", edit)
    [problem] = _problems({"opacity": {"bundle": str(copy)}})
    assert problem.startswith(f"models.opacity.bundle: {copy / 'configs' / 'metadata.json'}: ")
    assert expected in problem


def test_a_bundle_without_weights_is_refused(bundle, tmp_path):
    leave_out = ("model.ts", "model.ts.sha256", "model.pt", "model.pt.sha256")
    copy = copy_bundle(bundle, tmp_path / "b", leave_out)
    [problem] = _problems({"opacity": {"bundle": str(copy)}})
    assert problem.startswith(f"models.opacity.bundle: no weights in {copy}; expected one of ['models/model.ts'")


def test_a_missing_bundle_and_bundle_preprocessing_without_its_config_are_refused(bundle, tmp_path):
    copy = copy_bundle(bundle, tmp_path / "b", leave_out=("inference.json",))
    meta = metadata(RADIOGRAPH_BUNDLE)
    meta["pacsai"]["preprocessing"] = "bundle"
    (copy / "configs" / "metadata.json").write_text(json.dumps(meta))
    problems = _problems({"a": {"bundle": str(tmp_path / "nowhere")}, "b": {"bundle": str(copy)}})
    assert problems[0].startswith("models.a.bundle: cannot read") and "expected a MONAI bundle directory" in problems[0]
    assert problems[1].startswith("models.b.bundle: pacsai.preprocessing is bundle but")


def test_bundle_and_spec_together_are_refused(bundle):
    [problem] = _problems({"x": {"bundle": str(bundle), "spec": "x.yaml"}})
    assert problem == "models.x: both bundle and spec; expected one of them"


def test_a_spec_entry_is_filled_from_its_yaml(tmp_path):
    onnx, spec = make_exported(tmp_path, VOLUME_BUNDLE)
    entry = ModelEntry.model_validate(_expand({"ct": {"spec": str(spec), "weights": str(onnx)}})["models"]["ct"])
    assert (entry.kind, entry.input.spatial_size, entry.weights) == ("volume", (16, 32, 32), str(onnx))
    assert entry.findings[0].code.value == "1386000" and entry.findings[0].critical


def test_a_spec_without_kind_is_refused(tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text("name: n\nversion: 1\ninput: {spatial_size: [64, 64]}\nfindings: []\n")
    [problem] = _problems({"x": {"spec": str(spec), "weights": "net.onnx"}})
    assert problem == f"models.x.spec: {spec}: kind: missing; expected it in the spec of an exported network"


def test_a_version_from_its_own_bundle_is_expanded_and_inherits_only_serve(bundle):
    raw = {
        "name": "m",
        "version": "1.0.0",
        "weights": "w.pt",
        "sha256": SHA,
        "input": {"spatial_size": [64, 64]},
        "findings": [{"key": "nodule"}],
        "serve": {"max_batch_size": 2},
        "versions": {"1.2.0": {"bundle": str(bundle), "traffic": {"mode": "shadow"}}},
    }
    entry = ModelEntry.model_validate(_expand({"x": raw})["models"]["x"])
    child = entry.versions["1.2.0"]
    assert child.kind == "planar" and child.weights.endswith("model.ts") and child.sha256 is None
    assert child.serve.max_batch_size == 2 and child.traffic.mode == "shadow"
    assert set(entry.all_versions()) == {"1.0.0", "1.2.0"}


# --- the schema pieces: versions, traffic, routing safety ----------------------------------------

MODEL = {
    "name": "m",
    "version": "1.0.0",
    "weights": "w.pt",
    "sha256": SHA,
    "input": {"spatial_size": [64, 64]},
    "findings": [{"key": "nodule"}],
}


def _config_problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "site.yaml")
    return info.value.problems


def test_a_version_inherits_the_family_entry_but_not_its_sha256_for_other_weights():
    cfg = parse_config({"models": {"x": {**MODEL, "versions": {"2.0.0": {"weights": "v2.pt", "demo": True}}}}})
    child = cfg.models["x"].versions["2.0.0"]
    assert (child.version, child.weights, child.sha256, child.input) == ("2.0.0", "v2.pt", None, cfg.models["x"].input)
    same = parse_config({"models": {"x": {**MODEL, "versions": {"2.0.0": {"demo": True}}}}})
    assert same.models["x"].versions["2.0.0"].sha256 == SHA


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        ({"2.0.0": {"version": "3"}}, "versions.2.0.0: its model says version '3'; expected '2.0.0'"),
        ({"1.0.0": {"weights": "v.pt"}}, "versions.1.0.0: the family entry is already version 1.0.0"),
        ({"2": {"versions": {"3": {}}}}, "versions.2: has versions of its own; expected them all under the family"),
    ],
)
def test_versions_that_contradict_their_key_or_family_are_refused(versions, expected):
    [problem] = _config_problems({"models": {"x": {**MODEL, "versions": versions}}})
    assert problem.startswith("models.x") and expected in problem


@pytest.mark.parametrize(
    ("traffic", "expected"),
    [
        ({"mode": "canary", "percent": 0}, "canary percent 0.0; expected more than 0 and less than 100"),
        ({"mode": "canary", "percent": 100}, "canary percent 100.0; expected more than 0 and less than 100"),
        ({"mode": "canary", "percent": 101}, "models.x.traffic.percent: got 101"),
        ({"mode": "rule"}, "rule: no modalities and no calling_aes; expected at least one"),
        ({"mode": "mirror"}, "models.x.traffic.mode: got 'mirror'"),
    ],
)
def test_traffic_is_bounded(traffic, expected):
    [problem] = _config_problems({"models": {"x": {**MODEL, "traffic": traffic}}})
    assert expected in problem


def test_traffic_within_bounds_is_kept():
    assert TrafficConfig(mode="canary", percent=12.5).percent == 12.5
    assert TrafficConfig(mode="rule", calling_aes=("SITE_B",)).calling_aes == ("SITE_B",)


def test_a_bundle_entry_needs_codes_and_a_kind():
    findings_problem = _config_problems({"models": {"x": {**MODEL, "bundle": "b"}}})
    assert "findings.0.code: missing; expected a code for every finding of a bundle model" in findings_problem[0]
    coded = [{"key": "nodule", "code": {"scheme": "SCT", "value": "27925004", "meaning": "Nodule"}}]
    [problem] = _config_problems({"models": {"x": {**MODEL, "bundle": "b", "findings": coded}}})
    assert "kind: missing; expected planar, slices or volume" in problem


VOLUME_MODEL = {**MODEL, "kind": "volume", "input": {"spatial_size": [16, 32, 32]}, "modalities": ["CT"]}


def test_radiographs_are_never_routed_to_a_volumetric_model():
    raw = {"models": {"ct": VOLUME_MODEL}, "routing": {"rules": [{"name": "r", "family": "ct", "modalities": ["DX"]}]}}
    problems = _config_problems(raw)
    assert any(
        p.startswith("routing.rules.0.modalities: got radiograph modalities ['DX'] for model ct 1.0.0 of kind volume")
        for p in problems
    )


def test_routing_stays_within_the_declared_modalities():
    rules = [{"name": "r", "family": "ct", "modalities": ["CT", "MR"]}, {"name": "any", "family": "ct"}]
    problems = _config_problems({"models": {"ct": VOLUME_MODEL}, "routing": {"rules": rules}})
    assert problems == [
        "routing.rules.0.modalities: got ['MR']; expected only ['CT'], the modalities model ct 1.0.0 declares",
        "routing.rules.1.modalities: empty (any modality); expected a subset of ['CT'], the modalities model ct "
        "1.0.0 declares",
    ]


def test_each_version_is_checked_against_the_rule():
    versions = {"2.0.0": {"kind": "slices", "input": {"spatial_size": [32, 32]}, "modalities": ["CT", "CR"]}}
    model = {**MODEL, "modalities": ["CT", "CR"], "kind": "planar", "versions": versions}
    rules = [{"name": "r", "family": "x", "modalities": ["CR"]}]
    [problem] = _config_problems({"models": {"x": model}, "routing": {"rules": rules}})
    assert problem.startswith("routing.rules.0.modalities: got radiograph modalities ['CR'] for model x 2.0.0")


def test_a_rule_within_a_planar_models_modalities_is_accepted(bundle):
    models = _expand({"opacity": {"bundle": str(bundle)}})["models"]
    rules = [{"name": "cxr", "family": "opacity", "modalities": ["DX"]}]
    cfg = parse_config({"models": models, "routing": {"rules": rules}})
    assert cfg.models["opacity"].kind == "planar"
