"""Network architectures by model family.

Adding a family is one entry in ``_BUILDERS``: a function from the registry entry to an
untrained ``torch.nn.Module`` whose output has one channel per finding of the entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from monai.networks.nets import DenseNet121

from core.config import ModelEntry
from core.errors import ModelError

__all__ = ["FAMILIES", "build_network"]

logger = logging.getLogger(__name__)


def _chest_xray(entry: ModelEntry) -> torch.nn.Module:
    """2D DenseNet-121, one logit per finding (multi-label chest radiograph classification)."""
    if len(entry.input.spatial_size) != 2:
        raise ModelError(
            f"Got input.spatial_size {entry.input.spatial_size} for model {entry.name}; "
            "expected (H, W) for the 2D chest_xray network"
        )
    return DenseNet121(
        spatial_dims=2, in_channels=entry.input.channels, out_channels=len(entry.findings)
    )


_BUILDERS: dict[str, Callable[[ModelEntry], torch.nn.Module]] = {
    "chest_xray": _chest_xray,
}

FAMILIES: tuple[str, ...] = tuple(sorted(_BUILDERS))
"""Model families this module can build."""


def build_network(family: str, entry: ModelEntry) -> torch.nn.Module:
    """Build the untrained network of a model family for a registry entry.

    Args:
        family: Model family key, e.g. ``"chest_xray"``.
        entry: The registry entry (input spec and findings).

    Returns:
        The network, in training mode, on the CPU.

    Raises:
        ModelError: If the family is unknown or the entry does not fit its network.
    """
    builder = _BUILDERS.get(family)
    if builder is None:
        raise ModelError(f'Got model family "{family}"; expected one of {list(FAMILIES)}')
    return builder(entry)
