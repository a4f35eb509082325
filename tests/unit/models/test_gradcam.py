"""Grad-CAM maps point where the evidence is; the region is the peak's connected component."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import ModelError
from models.gradcam import GradCamMaker, region_of


class _Bright(torch.nn.Module):
    """Scores how bright the image is; its conv layer keeps the spatial layout."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Conv2d(1, 2, 3, padding=1)
        torch.nn.init.constant_(self.features.weight, 1.0 / 9)
        torch.nn.init.zeros_(self.features.bias)
        self.relu = torch.nn.ReLU()
        self.head = torch.nn.Linear(2, 1)
        torch.nn.init.constant_(self.head.weight, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.features(x)).mean(dim=(2, 3)))


def test_heatmap_peaks_on_the_bright_spot_and_leaves_the_network_untouched() -> None:
    network = _Bright().eval()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    image = np.zeros((1, 32, 32), dtype=np.float32)
    image[0, 20:24, 5:9] = 1.0
    heat = GradCamMaker(network, "relu")(image, 0)
    assert heat.shape == (32, 32) and heat.max() == pytest.approx(1.0) and heat.min() >= 0
    peak = np.unravel_index(int(heat.argmax()), heat.shape)
    assert 19 <= peak[0] <= 24 and 4 <= peak[1] <= 9
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert not network.relu._forward_hooks  # the hooks live on a private copy


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")
def test_torchscript_and_unknown_layers_are_refused() -> None:
    scripted = torch.jit.script(_Bright())
    with pytest.raises(ModelError, match="TorchScript"):
        GradCamMaker(scripted, "relu")
    with pytest.raises(ModelError, match="no layer"):
        GradCamMaker(_Bright(), "nope")


def test_region_is_the_component_around_the_peak() -> None:
    heat = np.zeros((20, 20))
    heat[2:5, 3:8] = 1.0
    heat[4, 3] = 0.9
    heat[12:18, 12:18] = 0.8  # a second, weaker blob is not part of the region
    region = region_of(heat)
    assert region is not None
    assert region.low == (2, 3) and region.high == (4, 7)
    assert region_of(np.zeros((4, 4, 4))) is None
