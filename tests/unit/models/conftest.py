"""Fixtures of the models unit tests: small registry entries and untrained weights on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.config import FindingSpec, ModelEntry, ModelInputSpec
from models.networks import build_network
from models.registry import file_sha256
from synthetic.phantoms import CXR_FINDINGS

SMALL_SIZE = (64, 64)
"""Spatial size of the unit-test networks: DenseNet-121 still works and stays fast."""


def cxr_entry(weights: Path, sha256: str | None = None) -> ModelEntry:
    """A chest X-ray entry with all 19 outputs at the small size."""
    findings = tuple(FindingSpec(key=k, threshold=0.5, critical=k == "tension_pneumothorax") for k in CXR_FINDINGS)
    return ModelEntry(
        name="cxr-unit",
        version="0.0-test",
        weights=str(weights),
        sha256=sha256,
        demo=True,
        input=ModelInputSpec(spatial_size=SMALL_SIZE),
        findings=findings,
    )


@pytest.fixture(scope="session")
def untrained_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised chest X-ray state_dict, saved once per session."""
    path = tmp_path_factory.mktemp("weights") / "cxr-untrained.pt"
    torch.manual_seed(0)
    network = build_network("chest_xray", cxr_entry(path))
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def untrained_entry(untrained_weights: Path) -> ModelEntry:
    """The entry of ``untrained_weights``, with its sha256 in the entry."""
    return cxr_entry(untrained_weights, sha256=file_sha256(untrained_weights))
