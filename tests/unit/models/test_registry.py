"""Weights are checked against their sha256 and errors name the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from core.errors import ModelError, ModelWeightsError
from models.networks import build_network
from models.registry import file_sha256, load_network, resolve_weights, sidecar_path

from .conftest import cxr_entry


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(ModelWeightsError, match=r"nowhere\.pt.*not found"):
        resolve_weights(cxr_entry(missing))


def test_missing_sidecar_is_named(untrained_weights: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    shutil.copy(untrained_weights, weights)
    with pytest.raises(ModelWeightsError, match=r"w\.pt\.sha256") as info:
        resolve_weights(cxr_entry(weights))
    assert str(weights) in str(info.value)


def test_malformed_sidecar_is_refused(untrained_weights: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    shutil.copy(untrained_weights, weights)
    sidecar_path(weights).write_text("not-a-hash\n")
    with pytest.raises(ModelWeightsError, match="64 hex digits"):
        resolve_weights(cxr_entry(weights))


def test_sidecar_in_sha256sum_format_is_accepted(untrained_weights: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    shutil.copy(untrained_weights, weights)
    sidecar_path(weights).write_text(f"{file_sha256(weights)}  w.pt\n")
    assert resolve_weights(cxr_entry(weights)) == weights


@pytest.mark.parametrize("where", ["entry", "sidecar"])
def test_mismatch_names_file_expected_and_found(where: str, untrained_weights: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    shutil.copy(untrained_weights, weights)
    wrong = "0" * 64
    if where == "sidecar":
        sidecar_path(weights).write_text(wrong)
    entry = cxr_entry(weights, sha256=wrong if where == "entry" else None)
    with pytest.raises(ModelWeightsError) as info:
        resolve_weights(entry)
    message = str(info.value)
    assert str(weights) in message and wrong in message and file_sha256(weights) in message


def test_state_dict_loads_in_eval_mode(untrained_entry: object) -> None:
    network = load_network("chest_xray", untrained_entry)  # type: ignore[arg-type]
    assert not network.training


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")
def test_torchscript_is_detected_and_loaded(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    entry = cxr_entry(path)
    torch.jit.script(torch.nn.Linear(3, 19)).save(str(path))
    network = load_network("chest_xray", cxr_entry(path, sha256=file_sha256(path)))
    assert isinstance(network, torch.jit.ScriptModule) and not network.training
    assert entry.weights == str(path)


def test_state_dict_of_another_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    entry = cxr_entry(path)
    fewer = entry.model_copy(update={"findings": entry.findings[:5]})
    torch.save(build_network("chest_xray", fewer).state_dict(), path)
    with pytest.raises(ModelWeightsError, match=r"other\.pt does not fit"):
        load_network("chest_xray", cxr_entry(path, sha256=file_sha256(path)))


def test_pickled_object_is_refused_without_running_it(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole module: not loadable with weights_only
    with pytest.raises(ModelWeightsError, match=r"module\.pt"):
        load_network("chest_xray", cxr_entry(path, sha256=file_sha256(path)))


def test_unknown_family_is_a_model_error(untrained_entry: object) -> None:
    with pytest.raises(ModelError, match="brain_mri"):
        load_network("brain_mri", untrained_entry)  # type: ignore[arg-type]


def test_a_clinical_model_needs_its_sha256_pinned_in_the_entry(untrained_weights: Path, tmp_path: Path) -> None:
    """Issue 13: whoever can write the weights can write a sidecar; only demo weights trust one."""
    weights = tmp_path / "w.pt"
    shutil.copy(untrained_weights, weights)
    sidecar_path(weights).write_text(file_sha256(weights))
    entry = cxr_entry(weights).model_copy(update={"demo": False})
    with pytest.raises(ModelWeightsError, match="no sha256 in its registry entry"):
        resolve_weights(entry)


def test_a_sidecar_may_only_confirm_the_pinned_sha256(untrained_weights: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    shutil.copy(untrained_weights, weights)
    pinned = file_sha256(weights)
    sidecar_path(weights).write_text(pinned)
    assert resolve_weights(cxr_entry(weights, sha256=pinned)) == weights
    sidecar_path(weights).write_text("f" * 64)
    with pytest.raises(ModelWeightsError, match="disagrees with the sha256 pinned"):
        resolve_weights(cxr_entry(weights, sha256=pinned))
