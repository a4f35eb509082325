"""Resampling onto the network grid is exact and invertible; intensities map to [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import ModelError
from models.resampling import AxisMap, grid_maps, resample, resample_planes, to_unit_range


def test_shrinking_by_an_integer_factor_is_block_averaging() -> None:
    image = np.arange(64 * 48, dtype=np.float64).reshape(64, 48)
    out = resample(image, grid_maps(image.shape, None, (16, 12), None))
    assert np.allclose(out, image.reshape(16, 4, 12, 4).mean(axis=(1, 3)))


def test_fit_map_sends_network_centres_to_source_centres() -> None:
    axis = AxisMap.fit(512, 64)
    assert axis.source(0) == pytest.approx(3.5)  # the centre of source pixels 0..7
    assert axis.source(63) == pytest.approx(507.5)


def test_growing_interpolates_linearly_and_keeps_the_edges() -> None:
    line = np.array([0.0, 10.0])
    out = resample(line, (AxisMap.fit(2, 4),))
    assert np.allclose(out, [0.0, 2.5, 7.5, 10.0])


def test_spacing_mode_centres_and_pads_with_the_minimum() -> None:
    volume = np.full((4, 10, 10), 5.0)
    volume[0, 0, 0] = -1000.0
    maps = grid_maps(volume.shape, (2.0, 1.0, 1.0), (4, 20, 20), (2.0, 1.0, 1.0))
    out = resample(volume, maps)
    assert out.shape == (4, 20, 20)
    assert out[1, 10, 10] == pytest.approx(5.0)
    assert out[1, 0, 0] == pytest.approx(-1000.0)  # outside the source: air
    assert maps[1].source(9.5) == pytest.approx(4.5)  # centre on centre


def test_spacing_mode_needs_a_pixel_spacing() -> None:
    with pytest.raises(ModelError, match="Pixel Spacing"):
        grid_maps((10, 10), None, (8, 8), (1.0, 1.0))
    with pytest.raises(ModelError, match="axes"):
        grid_maps((10, 10), None, (8, 8, 8), None)


def test_window_and_percentiles_map_to_the_unit_range() -> None:
    hu = np.array([-1000.0, 0.0, 40.0, 80.0, 1000.0])
    assert np.allclose(to_unit_range(hu, (40.0, 80.0)), [0.0, 0.0, 0.5, 1.0, 1.0])
    ramp = np.linspace(0.0, 100.0, 1001)
    scaled = to_unit_range(ramp * 3 + 7, None)
    assert np.allclose(scaled, to_unit_range(ramp, None))  # shift and scale do not matter
    with pytest.raises(ModelError, match="contrast"):
        to_unit_range(np.ones((4, 4)), None)


@pytest.mark.parametrize(
    ("spacing", "target", "target_mm"),
    [(None, (16, 12), None), ((0.5, 0.5), (40, 40), (1.0, 1.0)), ((2.0, 1.0), (8, 30), (1.5, 0.7))],
    ids=["fit", "spacing-padded", "spacing-grown"],
)
def test_a_stack_resampled_at_once_equals_each_plane_resampled_alone(spacing, target, target_mm) -> None:
    """``resample_planes`` (the slice models' batched path) is ``resample`` of each plane,
    each padded with its own minimum."""
    rng = np.random.default_rng(4)
    stack = rng.normal(40.0, 300.0, size=(5, 32, 24)).astype(np.float32)
    stack[2] -= 2000.0  # another minimum: its own padding
    maps = grid_maps(stack.shape[1:], spacing, target, target_mm)
    expected = np.stack([resample(plane, maps) for plane in stack])
    got = resample_planes(stack, maps)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-2)
