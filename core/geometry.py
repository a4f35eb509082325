"""Image geometry: one image's plane (PS3.3 C.7.6.2) and a series' stack of slices.

A model that reads a volume trusts that the slices of a series have one size and one
orientation, that no two slices sit at the same place, and that none is missing. The checks here
find where that is not so, from positions projected on the slice normal.

Slices are grouped into stacks before positions are compared, because one series may hold
several images per position on purpose: echoes (Echo Numbers), phases (Temporal Position
Identifier, Trigger Time), or repeated acquisitions (Acquisition Number).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from core.reasons import Level, Problem, ReasonCode

__all__ = ["GeometryPolicy", "Slice", "check_plane", "check_stack"]


@dataclass(frozen=True, slots=True)
class GeometryPolicy:
    """Tolerances of the geometry checks.

    Attributes:
        orientation_tolerance: Largest difference of a direction cosine still "the same".
        position_tolerance_mm: Slices closer than this along the normal share a position.
        gap_tolerance: A step larger than ``(1 + gap_tolerance)`` x the median step is a gap.
        plane_tolerance: Orientations differing by more than this (about 6 degrees) are
            different planes on purpose (localizers, radial projections); closer ones that are
            not within ``orientation_tolerance`` are slices tilted against their stack.
    """

    orientation_tolerance: float = 1e-3
    position_tolerance_mm: float = 0.01
    gap_tolerance: float = 0.5
    plane_tolerance: float = 0.1


@dataclass(frozen=True, slots=True)
class Slice:
    """One single-frame image with its plane, as the stack checks need it."""

    sop_instance_uid: str
    rows: int
    columns: int
    orientation: tuple[float, ...]
    position: tuple[float, ...]
    stack: tuple[str, ...] = ()


def check_plane(
    orientation: Sequence[float] | None, position: Sequence[float] | None, spacing: Sequence[float] | None
) -> list[Problem]:
    """Return problems of one image's plane attributes (those that are present).

    Args:
        orientation: Image Orientation (Patient): row and column direction cosines.
        position: Image Position (Patient), mm.
        spacing: Pixel Spacing (row spacing, column spacing), mm.
    """
    problems = []
    if orientation is not None:
        why = _orientation_problem(orientation)
        if why:
            problems.append(Problem(ReasonCode.INVALID_VALUE, f"ImageOrientationPatient (0020,0037): {why}"))
    if position is not None and len(position) != 3:
        problems.append(
            Problem(
                ReasonCode.INVALID_VALUE,
                f"ImagePositionPatient (0020,0032): got {len(position)} values; expected 3 (x, y, z in mm)",
            )
        )
    if spacing is not None and (len(spacing) != 2 or min(spacing) <= 0):
        shown = "\\".join(f"{v:g}" for v in spacing)
        problems.append(
            Problem(
                ReasonCode.INVALID_VALUE, f"PixelSpacing (0028,0030): got {shown!r}; expected two positive numbers (mm)"
            )
        )
    return problems


_VALID_ORIENTATIONS: set[tuple[float, ...]] = set()
"""Orientations found valid (every slice of a series repeats its own). Only valid ones are kept:
a message shows the values, and -0.0 == 0.0 would alias two of them."""


def _orientation_problem(cosines: Sequence[float]) -> str:
    if cosines.__class__ is tuple and cosines in _VALID_ORIENTATIONS:
        return ""
    problem = _cosines_problem(cosines)
    if not problem and cosines.__class__ is tuple:
        if len(_VALID_ORIENTATIONS) >= 1024:
            _VALID_ORIENTATIONS.clear()  # bounded: values come from the network
        _VALID_ORIENTATIONS.add(cosines)  # type: ignore[arg-type]
    return problem


def _cosines_problem(cosines: Sequence[float]) -> str:
    if len(cosines) != 6:
        return f"got {len(cosines)} values; expected 6 direction cosines"
    row, col = cosines[:3], cosines[3:]
    norms = (math.sqrt(sum(v * v for v in row)), math.sqrt(sum(v * v for v in col)))
    dot = sum(a * b for a, b in zip(row, col, strict=True))
    if any(abs(n - 1.0) > 1e-2 for n in norms) or abs(dot) > 1e-2:
        shown = "\\".join(f"{v:g}" for v in cosines)
        return f"got {shown!r}; expected two orthogonal unit vectors"
    return ""


def check_stack(series_uid: str, slices: Sequence[Slice], policy: GeometryPolicy) -> list[Problem]:
    """Return series-level problems of the single-frame slices of one series.

    Args:
        series_uid: The series, for messages.
        slices: Its slices that have a plane (orientation and position).
        policy: Tolerances.
    """
    planes = _planes(slices, policy.orientation_tolerance)
    tilted = _tilted(planes, policy)
    if tilted:
        return [
            Problem(
                ReasonCode.SERIES_ORIENTATION_MISMATCH,
                f"series {series_uid}: ImageOrientationPatient (0020,0037) of some slices "
                f"differs by {tilted:.3g} from the others' (tolerance "
                f"{policy.orientation_tolerance}); expected one orientation per plane",
                Level.SERIES,
            )
        ]
    problems: list[Problem] = []
    for plane in planes:
        sizes = sorted({(s.rows, s.columns) for s in plane})
        if len(sizes) > 1:
            shown = ", ".join(f"{r}x{c}" for r, c in sizes[:4])
            return [
                Problem(
                    ReasonCode.SERIES_DIMENSIONS_MISMATCH,
                    f"series {series_uid}: slices of one plane have Rows x Columns {shown}; expected one size",
                    Level.SERIES,
                )
            ]
        for stack in _stacks(plane):
            problems += _positions(series_uid, stack, plane[0].orientation, policy)
    return problems


def _difference(a: Sequence[float], b: Sequence[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def _planes(slices: Sequence[Slice], tolerance: float) -> list[list[Slice]]:
    """Group slices by orientation. A series may hold several planes on purpose (three-plane
    localizers, radial projections); each plane is a stack of its own."""
    planes: list[list[Slice]] = []
    for s in slices:
        for plane in planes:
            if _difference(plane[0].orientation, s.orientation) <= tolerance:
                plane.append(s)
                break
        else:
            planes.append([s])
    return planes


def _tilted(planes: list[list[Slice]], policy: GeometryPolicy) -> float:
    """The largest orientation difference between two planes that are too close to be two
    planes on purpose (a slice tilted against its stack); 0 when there is none."""
    worst = 0.0
    for i, a in enumerate(planes):
        for b in planes[i + 1 :]:
            diff = _difference(a[0].orientation, b[0].orientation)
            if diff <= policy.plane_tolerance:
                worst = max(worst, diff)
    return worst


def _stacks(slices: Sequence[Slice]) -> list[list[Slice]]:
    """Group slices by their stack key. Some scanners give every slice its own Acquisition
    Number (the key's last part); when the full key makes every group a single slice, group
    without it."""
    for width in (None, -1):
        groups: dict[tuple[str, ...], list[Slice]] = defaultdict(list)
        for s in slices:
            groups[s.stack[:width]].append(s)
        if any(len(g) > 1 for g in groups.values()):
            return list(groups.values())
    return []


def _normal(orientation: Sequence[float]) -> tuple[float, float, float]:
    r, c = orientation[:3], orientation[3:]
    return (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])


def _positions(
    series_uid: str, stack: list[Slice], orientation: Sequence[float], policy: GeometryPolicy
) -> list[Problem]:
    normal = _normal(orientation)
    placed = sorted(
        ((sum(p * n for p, n in zip(s.position, normal, strict=True)), s) for s in stack), key=lambda item: item[0]
    )
    steps = [b[0] - a[0] for a, b in zip(placed, placed[1:], strict=False)]
    same = [
        (a[1], b[1])
        for (a, b), step in zip(zip(placed, placed[1:], strict=False), steps, strict=True)
        if step < policy.position_tolerance_mm and _distance(a[1], b[1]) < policy.position_tolerance_mm
    ]
    if same:
        a, b = same[0]
        return [
            Problem(
                ReasonCode.DUPLICATE_POSITION,
                f"series {series_uid}: {len(same)} pair(s) of slices share an "
                f"ImagePositionPatient (0020,0032), e.g. {a.sop_instance_uid} and "
                f"{b.sop_instance_uid} at {_shown(a.position)}; expected one slice per "
                "position",
                Level.SERIES,
            )
        ]
    return _gaps(series_uid, placed, steps, policy)


def _gaps(
    series_uid: str, placed: list[tuple[float, Slice]], steps: list[float], policy: GeometryPolicy
) -> list[Problem]:
    if len(steps) < 2:
        return []
    usual = sorted(steps)[len(steps) // 2]
    limit = usual * (1.0 + policy.gap_tolerance)
    gaps = [(i, step) for i, step in enumerate(steps) if step > limit]
    if not gaps:
        return []
    i, step = gaps[0]
    return [
        Problem(
            ReasonCode.SLICE_GAP,
            f"series {series_uid}: {len(gaps)} gap(s) between slices, e.g. {step:.3g} mm "
            f"after {placed[i][1].sop_instance_uid}; expected about {usual:.3g} mm "
            f"(tolerance {policy.gap_tolerance:.0%})",
            Level.SERIES,
        )
    ]


def _distance(a: Slice, b: Slice) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a.position, b.position, strict=True)))


def _shown(position: Sequence[float]) -> str:
    return "\\".join(f"{v:g}" for v in position)
