"""Series geometry: stacks, duplicates, gaps, and the cases that are not errors."""

from __future__ import annotations

import pytest

from core.geometry import GeometryPolicy, Slice, check_plane, check_stack

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def stack(zs, stack_key=(), rows=32, orientation=AXIAL):
    return [Slice(f"1.2.{i}", rows, 32, orientation, (0.0, 0.0, float(z)), stack_key) for i, z in enumerate(zs)]


def codes(slices, **policy):
    return [p.code for p in check_stack("1.2.9", slices, GeometryPolicy(**policy))]


def test_regular_stack_in_any_order_passes():
    assert codes(stack([3, 0, 2, 1, 4])) == []


def test_duplicate_position():
    assert codes(stack([0, 1, 1, 2])) == ["duplicate_position"]


def test_gap_beyond_tolerance_and_not_within():
    assert codes(stack([0, 1, 2, 4, 5])) == ["slice_gap"]
    assert codes(stack([0, 1, 2, 3.4, 4.4])) == []  # 1.4 mm step: within 50 %
    assert codes(stack([0, 1, 2, 3.4, 4.4]), gap_tolerance=0.2) == ["slice_gap"]


def test_echoes_at_the_same_positions_are_separate_stacks():
    echo1 = stack([0, 1, 2], stack_key=("1", "", "", "1"))
    echo2 = [Slice(f"1.3.{i}", 32, 32, AXIAL, s.position, ("2", "", "", "1")) for i, s in enumerate(echo1)]
    assert codes(echo1 + echo2) == []
    assert codes([Slice(s.sop_instance_uid, 32, 32, AXIAL, s.position) for s in echo1 + echo2]) == [
        "duplicate_position"
    ]


def test_one_acquisition_number_per_slice_falls_back_to_one_stack():
    slices = [Slice(f"1.2.{z}", 32, 32, AXIAL, (0.0, 0.0, float(z)), ("", "", "", str(z))) for z in (0, 1, 1, 2)]
    assert codes(slices) == ["duplicate_position"]


def test_sizes_and_orientation_must_agree():
    assert codes(stack([0, 1]) + stack([2], rows=16)) == ["series_dimensions_mismatch"]
    tilted = (1.0, 0.0, 0.0, 0.0, 0.99863, 0.05234)  # 3 degrees
    assert codes(stack([0, 1]) + stack([2], orientation=tilted)) == ["series_orientation_mismatch"]


def test_planes_on_purpose_are_separate_stacks():
    """Three-plane localizers and radial projections (pydicom's dicomdirtests MR2 / MR700)."""
    sagittal, coronal = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    slices = stack([0, 1, 2]) + stack([0, 1], orientation=sagittal, rows=16) + stack([5], orientation=coronal)
    assert codes(slices) == []
    assert codes(slices + stack([1], orientation=sagittal, rows=16)) == ["duplicate_position"]


def test_oblique_stack_uses_the_normal():
    oblique = (1.0, 0.0, 0.0, 0.0, 0.8, 0.6)  # normal (0, -0.6, 0.8)
    slices = [Slice(f"1.2.{i}", 32, 32, oblique, (0.0, -0.6 * i, 0.8 * i)) for i in range(4)]
    assert codes(slices) == []
    assert codes(slices[:2] + slices[3:]) == []  # two steps: the usual step is the larger one
    assert codes(slices + [Slice("1.2.9", 32, 32, oblique, (0.0, -0.6 * 6, 0.8 * 6))]) == ["slice_gap"]


@pytest.mark.parametrize(
    "orientation, position, spacing, fragment",
    [
        ((2, 0, 0, 0, 1, 0), None, None, "orthogonal unit vectors"),
        ((1, 0, 0, 1, 0, 0), None, None, "orthogonal unit vectors"),
        ((1, 0, 0), None, None, "expected 6"),
        (None, (1.0, 2.0), None, "expected 3"),
        (None, None, (0.5, 0.0), "two positive numbers"),
        (None, None, (0.5,), "two positive numbers"),
    ],
)
def test_plane_attribute_values(orientation, position, spacing, fragment):
    [problem] = check_plane(orientation, position, spacing)
    assert problem.code == "invalid_value" and fragment in problem.message


def test_valid_plane_has_no_problems():
    assert check_plane(AXIAL, (0.0, 0.0, 0.0), (0.5, 0.5)) == []
