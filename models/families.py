"""The model families: which predictor serves each (networks are in :mod:`models.networks`).

Adding a built-in family: a network builder and Grad-CAM layer in ``networks``, a predictor class
here (usually a two-line subclass of a radiograph, slice or volume predictor), a training recipe
in :mod:`training.recipes`, and a registry entry plus routing rule in the config.

A family from a MONAI bundle or an exported network needs none of that (issue 17): its entry
says its ``kind``, and the generic predictor of that kind serves it under any family key
(``KIND_PREDICTORS``). Since such a network comes from outside, :func:`deploy_problems` runs it
once on a blank input before it is deployed, and names what does not fit its entry.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from core.config import ModelEntry
from core.errors import ModelError, ModelWeightsError
from models.bundles import BundlePreprocessing
from models.predictor import BoneFracturePredictor, ChestXrayPredictor, Predictor, RadiographPredictor
from models.registry import load_network
from models.volume_predictor import (
    BrainTumourPredictor,
    ChestCtaPredictor,
    HeadCtPredictor,
    SlicePredictor,
    VolumePredictor,
)

__all__ = ["KIND_DIMS", "KIND_PREDICTORS", "PREDICTORS", "deploy_problems", "load_predictor"]

logger = logging.getLogger(__name__)

PREDICTORS: dict[str, type[Predictor]] = {
    "bone_fracture": BoneFracturePredictor,
    "brain_mri_tumour": BrainTumourPredictor,
    "chest_cta": ChestCtaPredictor,
    "chest_xray": ChestXrayPredictor,
    "head_ct_haemorrhage": HeadCtPredictor,
}
"""Built-in family key -> predictor class."""

KIND_PREDICTORS: dict[str, type[Predictor]] = {
    "planar": RadiographPredictor,
    "slices": SlicePredictor,
    "volume": VolumePredictor,
}
"""``ModelEntry.kind`` of a bundle or exported family -> its generic predictor class."""

KIND_DIMS: dict[str, int] = {"planar": 2, "slices": 2, "volume": 3}
"""Axes of ``input.spatial_size`` each kind's network takes (a frame, a slice, a volume)."""


def load_predictor(family: str, entry: ModelEntry) -> Predictor:
    """Check and load the weights of a family's registry entry into its predictor.

    An entry with ``kind`` set gets the generic predictor of its kind, whatever the family key.

    Args:
        family: Model family key.
        entry: Its registry entry.

    Returns:
        The predictor.

    Raises:
        ModelError: If no predictor exists for ``family`` and the entry sets no ``kind``.
        ModelWeightsError: If the weights are missing, mismatched or do not fit.
    """
    predictor = KIND_PREDICTORS[entry.kind] if entry.kind is not None else PREDICTORS.get(family)
    if predictor is None:
        raise ModelError(
            f'Got model family "{family}"; expected one of {sorted(PREDICTORS)}, or an entry with kind '
            "(a bundle or an exported network)"
        )
    return predictor.load(entry, family)


def deploy_problems(family: str, entry: ModelEntry) -> list[str]:
    """Check a bundle or exported family against its entry before it is deployed.

    The network is loaded once on the CPU (weights checked against their sha256) and run on a
    zero input of the declared ``(1, channels, *spatial_size)``; with ``preprocessing: bundle``
    the bundle's transforms run on a zero image too.

    Args:
        family: Model family key.
        entry: Its registry entry, with ``kind`` set.

    Returns:
        One line per problem, each naming the field: ``models.<family>.<field>: ...``; empty if
        the family can be deployed.

    Raises:
        ModelWeightsError: If the weights are missing, mismatched or do not load (as for a
            built-in family).
    """
    where = f"models.{family}"
    size = tuple(entry.input.spatial_size)
    kind = entry.kind or "planar"
    if len(size) != KIND_DIMS[kind]:
        axes = "(H, W)" if KIND_DIMS[kind] == 2 else "(D, H, W)"
        return [
            f"{where}.input.spatial_size: got {list(size)} for kind {kind}; expected {KIND_DIMS[kind]} axes "
            f"{axes}, as a {kind} network takes"
        ]
    problems = _preprocessing_problems(where, entry)
    shape = (1, entry.input.channels, *size)
    try:
        network = load_network(family, entry, map_location="cpu")
    except ModelWeightsError:
        raise
    except ModelError as exc:  # the bundle's network_def cannot be built
        return [*problems, f"{where}.bundle: {exc.reason}"]
    try:
        with torch.inference_mode():
            output = network(torch.zeros(shape)).float().cpu().numpy()
    except Exception as exc:  # a foreign network may raise anything; refused, with its reason
        return [*problems, f"{where}.input.spatial_size: the network refused a {shape} input: {_short(exc)}"]
    return problems + _output_problems(where, entry, output)


def _preprocessing_problems(where: str, entry: ModelEntry) -> list[str]:
    if entry.preprocessing != "bundle":
        return []
    try:
        BundlePreprocessing(entry)(np.zeros((1, *entry.input.spatial_size), dtype=np.float32))
    except ModelError as exc:
        return [f"{where}.preprocessing: bundle: {exc.reason}"]
    return []


def _output_problems(where: str, entry: ModelEntry, output: np.ndarray) -> list[str]:
    expected = len(entry.findings)
    if output.ndim != 2 or output.shape[0] != 1:
        return [
            f"{where}.findings: the network gives outputs of shape {tuple(output.shape)} for one input; "
            f"expected (1, {expected}), one per declared finding"
        ]
    if output.shape[1] != expected:
        return [
            f"{where}.findings: the network gives {output.shape[1]} outputs; expected {expected}, one per "
            "declared finding"
        ]
    if not np.all(np.isfinite(output)):
        return [f"{where}.weights: the network gives {output.ravel().tolist()} for a zero input; expected finite"]
    if entry.output_activation == "none" and (output.min() < 0.0 or output.max() > 1.0):
        return [
            f"{where}.output_activation: none, but the network gives {output.ravel().round(4).tolist()} for a "
            "zero input; expected probabilities in [0, 1] (else sigmoid or softmax)"
        ]
    if entry.output_activation == "softmax" and expected == 1:
        return [f"{where}.output_activation: softmax over one output is always 1; expected sigmoid for one finding"]
    return []


def _short(exc: Exception) -> str:
    """The exception's last line: TorchScript puts its interpreter traceback first."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {(lines[-1] if lines else '')[:300]}"
