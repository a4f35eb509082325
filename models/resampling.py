"""Resampling images and volumes onto the network grid, and intensity to [0, 1].

Every axis is resampled by one linear operator, so that the mapping from a network index back
to a source index is exact and known: network index ``i`` samples source index
``scale * i + offset`` (``AxisMap``). That mapping is what turns a Grad-CAM peak back into a
source pixel, a source frame and a patient coordinate.

- Fit (``spacing_mm`` not set): the whole image or volume is squeezed into the network size,
  ``scale = n_in / n_out`` (the pixel-centre convention of ``torch`` ``area`` /
  ``align_corners=False``).
- Spacing (``spacing_mm`` set): ``scale = spacing_out / spacing_in``, centred, and whatever falls
  outside the source is padded with the image's minimum (air).

Shrinking averages the source over each network voxel's footprint (a box filter, no aliasing);
growing interpolates linearly. The operators are built in float64; the result is float32.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import ModelError

__all__ = ["AxisMap", "grid_maps", "resample", "resample_planes", "to_unit_range"]

logger = logging.getLogger(__name__)

PERCENTILES = (0.5, 99.5)
"""The robust range mapped to [0, 1] when no fixed window is configured."""


@dataclass(frozen=True, slots=True)
class AxisMap:
    """Output index ``i`` samples input (continuous) index ``scale * i + offset``.

    Attributes:
        scale: Input pixels per output pixel.
        offset: Input index of output index 0.
        size_in: Input length.
        size_out: Output length.
    """

    scale: float
    offset: float
    size_in: int
    size_out: int

    @classmethod
    def fit(cls, size_in: int, size_out: int) -> AxisMap:
        """Squeeze the whole axis into ``size_out`` pixels."""
        scale = size_in / size_out
        return cls(scale, 0.5 * scale - 0.5, size_in, size_out)

    @classmethod
    def spacing(cls, size_in: int, spacing_in: float, size_out: int, spacing_out: float) -> AxisMap:
        """Resample to ``spacing_out`` mm, centred on the input."""
        scale = spacing_out / spacing_in
        return cls(scale, (size_in - 1) / 2 - scale * (size_out - 1) / 2, size_in, size_out)

    def source(self, index: np.ndarray | float) -> np.ndarray | float:
        """Input index sampled by output index ``index`` (continuous)."""
        return self.scale * index + self.offset

    def matrix(self) -> np.ndarray:
        """The ``(size_out, size_in)`` operator; rows sum to the covered fraction (<= 1)."""
        out = np.zeros((self.size_out, self.size_in))
        centres = self.scale * np.arange(self.size_out) + self.offset
        if self.scale > 1.0:
            lo, hi = centres - self.scale / 2, centres + self.scale / 2
            edges = np.arange(self.size_in + 1) - 0.5
            overlap = np.minimum(hi[:, None], edges[None, 1:]) - np.maximum(lo[:, None], edges[None, :-1])
            return np.clip(overlap, 0.0, None) / self.scale
        inside = (centres >= -0.5) & (centres <= self.size_in - 0.5)
        clamped = np.clip(centres, 0.0, self.size_in - 1.0)
        low = np.minimum(np.floor(clamped).astype(int), max(self.size_in - 2, 0))
        weight = clamped - low
        rows = np.nonzero(inside)[0]
        out[rows, low[rows]] = 1.0 - weight[rows]
        if self.size_in > 1:
            out[rows, low[rows] + 1] += weight[rows]
        return out


def grid_maps(
    shape: Sequence[int],
    spacing: Sequence[float] | None,
    spatial_size: Sequence[int],
    spacing_mm: Sequence[float] | None,
) -> tuple[AxisMap, ...]:
    """Return one ``AxisMap`` per axis from a source grid to the network grid.

    Args:
        shape: Source shape, e.g. ``(rows, columns)`` or ``(slices, rows, columns)``.
        spacing: Source spacing per axis (mm), or None if unknown.
        spatial_size: Network shape, same number of axes.
        spacing_mm: Network spacing per axis, or None to fit the whole source.

    Returns:
        The per-axis maps.

    Raises:
        ModelError: If the axes disagree, or ``spacing_mm`` is set but the source has no spacing.
    """
    if len(shape) != len(spatial_size):
        raise ModelError(
            f"Got an input of shape {tuple(shape)}; expected {len(spatial_size)} axes for a "
            f"network input of {tuple(spatial_size)}"
        )
    if spacing_mm is None:
        return tuple(AxisMap.fit(n, m) for n, m in zip(shape, spatial_size, strict=True))
    if spacing is None:
        raise ModelError(
            "The model resamples to spacing_mm but the image has no Pixel Spacing; expected "
            "Pixel Spacing (0028,0030) or Imager Pixel Spacing (0018,1164)"
        )
    return tuple(
        AxisMap.spacing(n, s, m, t) for n, s, m, t in zip(shape, spacing, spatial_size, spacing_mm, strict=True)
    )


def resample(array: np.ndarray, maps: Sequence[AxisMap]) -> np.ndarray:
    """Resample ``array`` along each axis with ``maps``; pad with its minimum.

    Args:
        array: n-D values.
        maps: One map per axis.

    Returns:
        float32 array of shape ``tuple(m.size_out for m in maps)``.
    """
    values = np.asarray(array, dtype=np.float64)
    pad = float(values.min())
    coverage = np.ones((1,) * values.ndim)
    for axis, axis_map in enumerate(maps):
        operator = axis_map.matrix()
        values = np.moveaxis(np.tensordot(operator, values, axes=([1], [axis])), 0, axis)
        shape = [1] * values.ndim
        shape[axis] = axis_map.size_out
        coverage = coverage * operator.sum(axis=1).reshape(shape)
    return (values + (1.0 - coverage) * pad).astype(np.float32)


def resample_planes(stack: np.ndarray, maps: Sequence[AxisMap]) -> np.ndarray:
    """Resample every plane of ``stack`` in-plane with the same two maps: ``resample`` of each
    plane (each padded with its own minimum), as two batched matrix products.

    A 400-slice CT is one call instead of 400 (issue 14): the operators are built once and
    the products run in float32 BLAS over the whole stack.

    Args:
        stack: ``(planes, rows, columns)`` values.
        maps: The row and column maps.

    Returns:
        float32 ``(planes, maps[0].size_out, maps[1].size_out)``.
    """
    row_map, col_map = maps
    rows = row_map.matrix().astype(np.float32)
    cols = col_map.matrix().astype(np.float32)
    values = np.asarray(stack, dtype=np.float32)
    out = np.matmul(np.matmul(rows, values), cols.T)
    coverage = np.outer(rows.sum(axis=1), cols.sum(axis=1))
    if np.all(coverage >= 1.0 - 1e-6):
        return np.ascontiguousarray(out, dtype=np.float32)
    pad = values.reshape(values.shape[0], -1).min(axis=1)
    return (out + (1.0 - coverage)[None] * pad[:, None, None]).astype(np.float32)


def to_unit_range(values: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Map a fixed window ``(center, width)`` or the robust percentile range to [0, 1].

    Args:
        values: Modality values of any shape.
        window: ``(center, width)`` in modality units, or None for percentiles.

    Returns:
        float32 values in [0, 1].

    Raises:
        ModelError: If there is no window and the image has no contrast.
    """
    if window is not None:
        low, width = window[0] - window[1] / 2, window[1]
        return np.clip((values - low) / width, 0.0, 1.0).astype(np.float32)
    low, high = np.percentile(values, PERCENTILES)
    if not np.isfinite(low) or not np.isfinite(high) or high - low <= 1e-6 * max(1.0, abs(high)):
        raise ModelError(
            f"Got an image without contrast (percentiles {PERCENTILES} are {low:g} and {high:g}); expected an image"
        )
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)
