"""Demo training writes weights with a matching sidecar; the AUC helper is right."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from core.config import FindingSpec, ModelEntry, ModelInputSpec
from core.errors import ModelError
from models.families import load_predictor
from models.predictor import ChestXrayPredictor
from models.registry import file_sha256, resolve_weights, sidecar_path
from synthetic.head_phantoms import HEAD_CT_FINDINGS
from synthetic.phantoms import PHANTOM_FINDINGS
from tests.unit.models.conftest import cxr_entry
from training.training import auc, train_demo


def test_smoke_training_writes_weights_and_matching_sidecar(tmp_path: Path) -> None:
    out = tmp_path / "demo" / "cxr.pt"
    entry = cxr_entry(out)
    lines: list[str] = []
    report = train_demo("chest_xray", entry, out, steps=3, batch_size=4, log=lines.append, eval_size=8)
    assert out.is_file() and sidecar_path(out).is_file()
    assert sidecar_path(out).read_text().split()[0] == file_sha256(out) == report.sha256
    assert resolve_weights(entry) == out
    assert report.steps == 3 and math.isfinite(report.final_loss) and report.seconds > 0
    assert {e.key for e in report.evaluation} == set(PHANTOM_FINDINGS)
    assert any(line.startswith("step 3/3") for line in lines)
    assert not list(out.parent.glob(".*tmp")), "temporary files left behind"
    ChestXrayPredictor.load(entry).self_test()


def test_refuses_unknown_family_and_bad_steps(tmp_path: Path) -> None:
    entry = cxr_entry(tmp_path / "w.pt")
    with pytest.raises(ModelError, match="family"):
        train_demo("head_ct", entry, tmp_path / "w.pt", steps=1)
    with pytest.raises(ModelError, match="steps=-1"):
        train_demo("chest_xray", entry, tmp_path / "w.pt", steps=-1)


def test_auc() -> None:
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert auc(np.array([0.2, 0.2]), np.array([0, 1])) == 0.5
    assert auc(np.array([0.9, 0.1]), np.array([1, 0])) == 1.0
    assert math.isnan(auc(np.array([0.3]), np.array([1])))


@pytest.mark.parametrize(
    ("family", "spec", "keys"),
    [
        ("brain_mri_tumour", ModelInputSpec(spatial_size=(16, 24, 24)), ("brain_tumour",)),
        ("head_ct_haemorrhage", ModelInputSpec(spatial_size=(32, 32), window=(40.0, 80.0)), HEAD_CT_FINDINGS),
    ],
)
def test_recipe_families_train_and_evaluate_through_their_predictor(
    tmp_path: Path, family: str, spec: ModelInputSpec, keys: tuple[str, ...]
) -> None:
    out = tmp_path / f"{family}.pt"
    entry = ModelEntry(
        name=family,
        version="0-test",
        weights=str(out),
        demo=True,
        input=spec,
        findings=tuple(FindingSpec(key=k) for k in keys),
    )
    report = train_demo(family, entry, out, steps=2, batch_size=2, log=lambda _: None, eval_size=2)
    assert report.steps == 2 and report.batch_size == 2 and math.isfinite(report.final_loss)
    assert [e.key for e in report.evaluation] == list(keys)
    assert sum(e.n_positive + e.n_negative for e in report.evaluation[:1]) == 2
    load_predictor(family, entry).self_test()
