"""Demo training recipes of the families other than chest X-ray (see :mod:`training.training`).

A recipe draws a fresh training batch of network inputs and labels from phantoms, through the
same resampling and intensity mapping as inference (:mod:`models.resampling`,
:func:`models.preprocessing.prepare_pixels`), and builds held-out studies as synthetic DICOM,
which the evaluation sends through the family's whole predictor (decode, assemble, resample,
study-level aggregation). Budgets are sized so that the four recipes together train in about
five minutes on two CPU cores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.config import ModelEntry
from models.preprocessing import prepare_pixels
from models.resampling import grid_maps, resample, to_unit_range
from synthetic.aorta_phantoms import chest_cta_volume
from synthetic.brain_phantoms import brain_volume
from synthetic.head_phantoms import BLEEDS, head_slice, sample_bleed, sample_head
from synthetic.limb_phantoms import limb_phantom
from synthetic.synthetic_studies import (
    BRAIN_SHAPE,
    BRAIN_SPACING,
    CTA_SHAPE,
    CTA_SPACING,
    SyntheticStudy,
    brain_mr_study,
    chest_cta_study,
    fracture_study,
    head_ct_study,
)

__all__ = ["RECIPES", "Recipe"]

logger = logging.getLogger(__name__)

Batch = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True, slots=True)
class Recipe:
    """How to train one family briefly.

    Attributes:
        draw: ``(rng, entry, size) -> (inputs (N, C, *spatial), labels (N, K))``.
        held_out: ``(rng, index) -> a synthetic study`` for the evaluation.
        steps: Default optimiser steps.
        batch_size: Inputs per step.
        eval_size: Held-out studies.
        learning_rate: Peak AdamW learning rate (the small networks take a high one).
    """

    draw: Callable[[np.random.Generator, ModelEntry, int], Batch]
    held_out: Callable[[np.random.Generator, int], SyntheticStudy]
    steps: int
    batch_size: int
    eval_size: int
    learning_rate: float = 5e-3


def _labels(entry: ModelEntry, findings: frozenset[str]) -> list[float]:
    return [float(spec.key in findings) for spec in entry.findings]


def _fracture_batch(rng: np.random.Generator, entry: ModelEntry, size: int) -> Batch:
    spatial = tuple(entry.input.spatial_size)
    images = np.empty((size, 1, *spatial), dtype=np.float32)
    labels = np.empty((size, len(entry.findings)), dtype=np.float32)
    for i in range(size):
        phantom = limb_phantom(rng, 2 * max(spatial), fracture=bool(i % 2))
        images[i] = prepare_pixels(phantom.image, spatial)
        labels[i] = _labels(entry, phantom.findings)
    return images, labels


def _head_batch(rng: np.random.Generator, entry: ModelEntry, size: int) -> Batch:
    spatial = tuple(entry.input.spatial_size)
    images = np.empty((size, 1, *spatial), dtype=np.float32)
    labels = np.empty((size, len(entry.findings)), dtype=np.float32)
    for i in range(size):
        kinds = [k for k in BLEEDS if rng.random() < 0.15]
        low = -0.4 if "intraventricular" in kinds else -0.85
        level = rng.uniform(low, -low)
        pixels = int(rng.choice([64, 96, 128]))
        phantom = head_slice(sample_head(rng), level, pixels, [sample_bleed(rng, k) for k in kinds], rng)
        maps = grid_maps(phantom.hu.shape, None, spatial, None)
        images[i, 0] = to_unit_range(resample(phantom.hu, maps), entry.input.window)
        labels[i] = _labels(entry, phantom.findings)
    return images, labels


def _volume_batch(
    make: Callable[[np.random.Generator, bool], tuple[np.ndarray, frozenset[str]]],
    spacing: tuple[float, float, float],
) -> Callable[[np.random.Generator, ModelEntry, int], Batch]:
    def draw(rng: np.random.Generator, entry: ModelEntry, size: int) -> Batch:
        spatial = tuple(entry.input.spatial_size)
        images = np.empty((size, 1, *spatial), dtype=np.float32)
        labels = np.empty((size, len(entry.findings)), dtype=np.float32)
        for i in range(size):
            values, findings = make(rng, bool(i % 2))
            maps = grid_maps(values.shape, spacing, spatial, entry.input.spacing_mm)
            images[i, 0] = to_unit_range(resample(values, maps), entry.input.window)
            labels[i] = _labels(entry, findings)
        return images, labels

    return draw


def _brain(rng: np.random.Generator, positive: bool) -> tuple[np.ndarray, frozenset[str]]:
    phantom = brain_volume(rng, BRAIN_SHAPE, BRAIN_SPACING, positive)
    return phantom.values, phantom.findings


def _cta(rng: np.random.Generator, positive: bool) -> tuple[np.ndarray, frozenset[str]]:
    phantom = chest_cta_volume(rng, CTA_SHAPE, CTA_SPACING, positive)
    return phantom.hu, phantom.findings


def _held_out_head(rng: np.random.Generator, index: int) -> SyntheticStudy:
    """Every other study has one bleed type over three to five contiguous slices."""
    seed = int(rng.integers(2**31))
    if index % 2 == 0:
        return head_ct_study(seed, n_slices=16)
    kind = BLEEDS[(index // 2) % len(BLEEDS)]
    first = int(rng.integers(5, 9))
    span = range(first, first + int(rng.integers(3, 6)))
    return head_ct_study(seed, {k: [kind] for k in span}, n_slices=16)


RECIPES: dict[str, Recipe] = {
    "bone_fracture": Recipe(
        _fracture_batch,
        lambda rng, i: fracture_study(int(rng.integers(2**31)), bool(i % 2)),
        steps=200,
        batch_size=16,
        eval_size=48,
        learning_rate=2e-3,
    ),
    "brain_mri_tumour": Recipe(
        _volume_batch(_brain, BRAIN_SPACING),
        lambda rng, i: brain_mr_study(int(rng.integers(2**31)), bool(i % 2)),
        steps=140,
        batch_size=8,
        eval_size=32,
    ),
    "chest_cta": Recipe(
        _volume_batch(_cta, CTA_SPACING),
        lambda rng, i: chest_cta_study(int(rng.integers(2**31)), bool(i % 2)),
        steps=160,
        batch_size=8,
        eval_size=32,
    ),
    "head_ct_haemorrhage": Recipe(
        _head_batch,
        _held_out_head,
        steps=240,
        batch_size=32,
        eval_size=60,
    ),
}
"""Family key -> its demo training recipe."""
