"""Network architectures by model family.

Adding a family is one entry in ``_BUILDERS``: a function from the registry entry to an
untrained ``torch.nn.Module`` whose output has one channel per finding of the entry, and one in
``GRADCAM_LAYERS``: the layer whose activations localise a finding. A family from a MONAI bundle
(an entry with ``kind`` set) needs neither: its network is the bundle's ``network_def``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from monai.networks.nets import DenseNet, DenseNet121

from core.config import ModelEntry
from core.errors import ModelError
from models.bundles import network_from_bundle

__all__ = ["FAMILIES", "GRADCAM_LAYERS", "build_network"]

logger = logging.getLogger(__name__)


def _chest_xray(entry: ModelEntry) -> torch.nn.Module:
    """2D DenseNet-121, one logit per finding (multi-label chest radiograph classification)."""
    if len(entry.input.spatial_size) != 2:
        raise ModelError(
            f"Got input.spatial_size {entry.input.spatial_size} for model {entry.name}; "
            "expected (H, W) for the 2D chest_xray network"
        )
    return DenseNet121(spatial_dims=2, in_channels=entry.input.channels, out_channels=len(entry.findings))


def _small_densenet(
    entry: ModelEntry, dims: int, features: int, growth: int, blocks: tuple[int, ...]
) -> torch.nn.Module:
    """A narrow MONAI DenseNet that trains in about a minute on two CPU cores."""
    if len(entry.input.spatial_size) != dims:
        raise ModelError(
            f"Got input.spatial_size {entry.input.spatial_size} for model {entry.name}; "
            f"expected {'(H, W)' if dims == 2 else '(D, H, W)'} for this {dims}D network"
        )
    return DenseNet(
        spatial_dims=dims,
        in_channels=entry.input.channels,
        out_channels=len(entry.findings),
        init_features=features,
        growth_rate=growth,
        block_config=blocks,
        bn_size=2,
    )


_BUILDERS: dict[str, Callable[[ModelEntry], torch.nn.Module]] = {
    "bone_fracture": lambda e: _small_densenet(e, 2, 16, 12, (2, 2, 2)),
    "brain_mri_tumour": lambda e: _small_densenet(e, 3, 8, 8, (2, 2, 2)),
    "chest_cta": lambda e: _small_densenet(e, 3, 12, 12, (2, 2)),
    "chest_xray": _chest_xray,
    "head_ct_haemorrhage": lambda e: _small_densenet(e, 2, 24, 16, (3, 3)),
}

GRADCAM_LAYERS: dict[str, str] = {
    "bone_fracture": "class_layers.relu",
    "brain_mri_tumour": "features.denseblock2",
    "chest_cta": "class_layers.relu",
    "chest_xray": "class_layers.relu",
    "head_ct_haemorrhage": "class_layers.relu",
}
"""Layer whose activations and gradients Grad-CAM weighs, per family. The brain network's last
feature map (1/16 of the input) is too coarse to place a tumour, so it uses an earlier block;
the CTA network stops downsampling at 1/8, where its class layer still localises the flap (on
held-out phantoms the peak lay a median 15 mm from the flap, against 33 mm for an earlier
block of a deeper network)."""

FAMILIES: tuple[str, ...] = tuple(sorted(_BUILDERS))
"""Model families this module can build."""


def build_network(family: str, entry: ModelEntry) -> torch.nn.Module:
    """Build the untrained network of a model family for a registry entry.

    An entry with ``kind`` set (a bundle or exported family) gets its bundle's ``network_def``,
    whatever the family key.

    Args:
        family: Model family key, e.g. ``"chest_xray"``.
        entry: The registry entry (input spec and findings).

    Returns:
        The network, in training mode, on the CPU.

    Raises:
        ModelError: If the family is unknown or the entry does not fit its network, or a bundle's
            ``network_def`` cannot be built.
    """
    if entry.kind is not None:
        return network_from_bundle(entry)
    builder = _BUILDERS.get(family)
    if builder is None:
        raise ModelError(f'Got model family "{family}"; expected one of {list(FAMILIES)}')
    return builder(entry)
