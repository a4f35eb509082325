"""Image-quality flags for technologists, from simple measurements (no network).

- ``incomplete_series``: slices are missing from a regular stack (a gap of a whole number of
  slice spacings between Image Positions, or frames missing from a multi-frame instance).
- ``motion_artefact``: the patient moved between slices. Consecutive slices of a still
  patient differ by noise and slow anatomical change; a move makes one step differ far more than
  its neighbours. The score is the largest ratio of a step's mean absolute difference to the
  median of the steps around it (values clipped to the 1-99 % range, so metal does not
  dominate), read on a lattice of at most 128 x 128 pixels per slice; a slow trend (the skull narrowing towards the vertex) does not count.

A flag is a plain dict (``key``, ``series_instance_uid``, ``score``, ``threshold``, ``detail``)
that travels in ``Prediction.quality_flags`` into the SR and the audit trail.
"""

from __future__ import annotations

import logging

import numpy as np

from core.records import QualityFlag
from models.volumes import Volume

__all__ = ["MOTION_THRESHOLD", "motion_score", "volume_flags"]

logger = logging.getLogger(__name__)

MOTION_THRESHOLD = 4.0
"""Largest over median consecutive-slice difference above which motion is flagged."""

_MIN_SLICES = 5
"""Below this many slices there is no median to compare a step with."""
_NEIGHBOURS = 3
"""Steps on each side that a step is compared with."""
_SAMPLED = 128
"""Rows and columns of each slice the score reads (every ``stride``-th pixel): a step's mean
difference over a 128 x 128 lattice estimates the full slice's, at 1/16 of a 512 x 512 CT's work."""


def motion_score(volume: Volume) -> float:
    """Return the largest consecutive-slice step over the median of its neighbours (1.0 if too
    few slices). Missing (filled) slices are skipped, so a gap does not count as motion."""
    present = [k for k, frame in enumerate(volume.frames) if frame is not None]
    if len(present) < _MIN_SLICES:
        return 1.0
    stride = max(1, -(-max(volume.array.shape[1:]) // _SAMPLED))
    sampled = volume.array[:, ::stride, ::stride][present]
    low, high = np.percentile(sampled, (1.0, 99.0))
    values = np.clip(sampled, low, max(high, low + 1e-6))
    steps = np.abs(np.diff(values, axis=0)).mean(axis=(1, 2))
    steps = steps[np.diff(present) == 1]
    if steps.size < _MIN_SLICES - 1:
        return 1.0
    ratios = []
    for k, step in enumerate(steps):
        around = np.concatenate([steps[max(0, k - _NEIGHBOURS) : k], steps[k + 1 : k + 1 + _NEIGHBOURS]])
        ratios.append(step / max(float(np.median(around)), 1e-9))
    return float(max(ratios))


def volume_flags(volume: Volume) -> list[QualityFlag]:
    """Return the quality flags of one volume (empty when nothing is wrong).

    Args:
        volume: An assembled volume.

    Returns:
        Zero, one or two flags.
    """
    flags: list[QualityFlag] = []
    missing = volume.missing
    if missing:
        flags.append(
            QualityFlag(
                "incomplete_series",
                volume.series_instance_uid,
                float(len(missing)),
                1.0,
                f"{len(missing)} of {len(volume.frames)} slices missing (slice indices {list(missing)[:10]})",
            )
        )
    score = motion_score(volume)
    if score > MOTION_THRESHOLD:
        flags.append(
            QualityFlag(
                "motion_artefact",
                volume.series_instance_uid,
                round(score, 3),
                MOTION_THRESHOLD,
                f"a slice-to-slice change {score:.1f} times the median",
            )
        )
    return flags
