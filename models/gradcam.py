"""Grad-CAM heatmaps (MONAI ``monai.visualize.GradCAM``) and the region they point at.

MONAI's ``GradCAM`` hooks the target layer for good (forward and backward hooks that stay on
the module), so it works on a private copy of the network: the copy the replica batches with
never runs hooks or keeps activations. Calls are serialised by a lock (the hooks store the
last activations on the wrapper).

MONAI's default post-processing maps (min, max) to (1, 0), flipping the map; we keep the raw
ReLU map and divide by its maximum instead, so 1 is the strongest evidence and 0 none.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass

import numpy as np
import torch
from monai.visualize import GradCAM

from core.errors import ModelError

__all__ = ["GradCamMaker", "Region", "region_of"]

logger = logging.getLogger(__name__)

REGION_LEVEL = 0.5
"""The region of a heatmap is where it reaches this fraction of its peak."""


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class GradCamMaker:
    """Computes Grad-CAM maps of one network for one class at a time.

    Args:
        network: The trained network (not modified: a copy is hooked).
        target_layer: Name of the layer to weigh (``network.named_modules()``).
        device: Torch device of ``network``.

    Raises:
        ModelError: If the network cannot be hooked (TorchScript) or has no such layer.
    """

    def __init__(self, network: torch.nn.Module, target_layer: str, device: str = "cpu") -> None:
        if isinstance(network, torch.jit.ScriptModule):
            raise ModelError(
                "Got a TorchScript network; Grad-CAM needs module hooks, expected a state_dict "
                "model (or set heatmaps: false in the registry entry)"
            )
        if target_layer not in dict(network.named_modules()):
            raise ModelError(f"Network has no layer {target_layer!r} for Grad-CAM")
        self._network = copy.deepcopy(network).eval()
        self._cam = GradCAM(self._network, target_layers=target_layer, postprocessing=_identity)
        self._device = torch.device(device)
        self._lock = threading.Lock()

    def __call__(self, item: np.ndarray, class_index: int) -> np.ndarray:
        """Return the map of ``class_index`` for one network input item.

        Args:
            item: float32 ``(C, *spatial)``.
            class_index: Output channel (finding) to explain.

        Returns:
            float32 ``spatial`` map in [0, 1] (all zeros if nothing supports the class).
        """
        tensor = torch.from_numpy(np.ascontiguousarray(item, dtype=np.float32))[None]
        with self._lock, torch.enable_grad():
            raw = self._cam(tensor.to(self._device), class_idx=class_index)
        heat = raw[0, 0].detach().float().cpu().numpy()
        peak = float(heat.max())
        return (heat / peak).astype(np.float32) if peak > 0 else np.zeros_like(heat)


@dataclass(frozen=True, slots=True)
class Region:
    """Where a heatmap points, in the heatmap's own index space.

    Attributes:
        peak: Index of the maximum (one value per axis).
        low: First index of the bounding box of the region (>= ``REGION_LEVEL`` of the peak).
        high: Last index of that bounding box (inclusive).
    """

    peak: tuple[int, ...]
    low: tuple[int, ...]
    high: tuple[int, ...]


def region_of(heat: np.ndarray) -> Region | None:
    """Return the peak and the bounding box of the connected region around it.

    Only the part of the thresholded map that touches the peak counts (a flood fill), so a
    second, weaker blob elsewhere does not stretch the box.

    Args:
        heat: A map in [0, 1], any number of axes.

    Returns:
        The region, or None if the map is all zero.
    """
    if not np.any(heat > 0):
        return None
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    above = heat >= REGION_LEVEL * float(heat[peak])
    grown = np.zeros_like(above)
    grown[peak] = True
    while True:  # grow the peak's component one face-neighbour step at a time
        spread = grown.copy()
        for axis in range(heat.ndim):
            spread |= np.roll(grown, 1, axis) & _not_wrapped(heat.shape, axis, 1)
            spread |= np.roll(grown, -1, axis) & _not_wrapped(heat.shape, axis, -1)
        spread &= above
        if np.array_equal(spread, grown):
            break
        grown = spread
    where = np.nonzero(grown)
    return Region(
        tuple(int(i) for i in peak),
        tuple(int(w.min()) for w in where),
        tuple(int(w.max()) for w in where),
    )


def _not_wrapped(shape: tuple[int, ...], axis: int, shift: int) -> np.ndarray:
    """False on the slab that ``np.roll`` wrapped around."""
    keep = np.ones(shape, dtype=bool)
    index = [slice(None)] * len(shape)
    index[axis] = slice(0, 1) if shift > 0 else slice(-1, None)
    keep[tuple(index)] = False
    return keep
