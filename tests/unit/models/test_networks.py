"""Networks have one output per finding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.config import ModelInputSpec
from core.errors import ModelError
from models.networks import FAMILIES, build_network

from .conftest import SMALL_SIZE, cxr_entry


def test_chest_xray_outputs_one_logit_per_finding(tmp_path: Path) -> None:
    entry = cxr_entry(tmp_path / "w.pt")
    network = build_network("chest_xray", entry).eval()
    with torch.inference_mode():
        out = network(torch.zeros(3, 1, *SMALL_SIZE))
    assert out.shape == (3, 19)
    assert "chest_xray" in FAMILIES


def test_unknown_family_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"chest_xray"):
        build_network("knee_mri", cxr_entry(tmp_path / "w.pt"))


def test_3d_input_size_is_refused(tmp_path: Path) -> None:
    entry = cxr_entry(tmp_path / "w.pt").model_copy(update={"input": ModelInputSpec(spatial_size=(8, 64, 64))})
    with pytest.raises(ModelError, match=r"expected \(H, W\)"):
        build_network("chest_xray", entry)
