"""Synthetic axial head CT phantoms in HU with known intracranial haemorrhages (numpy only).

A slice shows scalp, skull, brain (grey rim, white core), sulci and the interhemispheric fissure
(CSF), and, at mid levels, the lateral ventricles. Its ``level`` in [-1, 1] runs from the vertex
to the skull base and sets the brain's size, so a stack of slices is a plausible head volume.

Each bleed type has the morphology a radiologist looks for (acute blood is 55-80 HU):

- ``epidural``: a thick biconvex lens against the inner table.
- ``subdural``: a thin crescent along a long arc of the inner table, a little less dense.
- ``subarachnoid``: blood filling the sulci and the fissure of one sector.
- ``intraparenchymal``: a round clot inside the brain with a dark oedema rim.
- ``intraventricular``: blood layering in the dependent (posterior) part of a ventricle.
- ``traumatic``: a skull fracture with scalp swelling and cortical contusions under it.

``any_haemorrhage`` is positive when any of them is visible. Labels come from what was actually
drawn (a bleed that falls outside this slice's brain is not labelled). Pineal and falx
calcifications (bright but not blood) appear in negatives and positives alike.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BLEEDS",
    "Bleed",
    "HEAD_CT_FINDINGS",
    "HeadAnatomy",
    "HeadSlice",
    "head_slice",
    "head_volume",
    "sample_bleed",
    "sample_head",
]

logger = logging.getLogger(__name__)

HEAD_CT_FINDINGS: tuple[str, ...] = (
    "any_haemorrhage",
    "epidural",
    "subdural",
    "subarachnoid",
    "intraparenchymal",
    "intraventricular",
    "traumatic",
)
"""Outputs of the head CT model, in network order."""

BLEEDS: tuple[str, ...] = HEAD_CT_FINDINGS[1:]
"""Bleed types a phantom can show."""

_AIR, _SCALP, _BONE, _CSF, _OEDEMA = -1000.0, 35.0, 1100.0, 6.0, 16.0
_VENTRICLE_LEVELS = 0.45
"""Ventricles are visible for |level| below this."""
_MIN_PIXELS = 3
"""A bleed covering fewer pixels than this (at the drawn size) is not labelled."""


@dataclass(frozen=True, slots=True)
class HeadAnatomy:
    """The fixed anatomy of one head (fractions of the image width)."""

    cx: float
    cy: float
    ax: float
    ay: float
    skull: float
    scalp: float
    ventricle_dx: float
    ventricle_ax: float
    ventricle_ay: float
    sulci: int
    sulci_phase: float
    grey_hu: float
    white_hu: float


@dataclass(frozen=True, slots=True)
class Bleed:
    """One bleed: its type and where it is (angles in radians, sizes relative to the brain)."""

    kind: str
    angle: float
    extent: float
    depth: float
    x: float
    y: float
    radius: float
    hu: float


@dataclass(frozen=True, eq=False)
class HeadSlice:
    """One slice and its truth.

    Attributes:
        hu: float32 ``(size, size)`` Hounsfield units.
        findings: Visible bleeds, with ``any_haemorrhage`` if there is one.
        lesion_mask: bool ``(size, size)``, every bleed pixel.
    """

    hu: np.ndarray
    findings: frozenset[str]
    lesion_mask: np.ndarray


def sample_head(rng: np.random.Generator) -> HeadAnatomy:
    """Draw one head's anatomy."""
    return HeadAnatomy(
        cx=0.5 + rng.uniform(-0.02, 0.02),
        cy=0.5 + rng.uniform(-0.02, 0.02),
        ax=rng.uniform(0.3, 0.34),
        ay=rng.uniform(0.37, 0.41),
        skull=rng.uniform(0.025, 0.035),
        scalp=rng.uniform(0.015, 0.025),
        ventricle_dx=rng.uniform(0.045, 0.06),
        ventricle_ax=rng.uniform(0.025, 0.035),
        ventricle_ay=rng.uniform(0.1, 0.13),
        sulci=int(rng.integers(14, 22)),
        sulci_phase=rng.uniform(0, 2 * np.pi),
        grey_hu=rng.uniform(36, 42),
        white_hu=rng.uniform(26, 31),
    )


def sample_bleed(rng: np.random.Generator, kind: str) -> Bleed:
    """Draw the place and size of one bleed of ``kind`` (one of ``BLEEDS``).

    Raises:
        ValueError: If ``kind`` is not a bleed type.
    """
    if kind not in BLEEDS:
        raise ValueError(f"Got bleed kind {kind!r}; expected one of {list(BLEEDS)}")
    shapes = {  # (extent, depth, radius) ranges
        "epidural": ((0.3, 0.45), (0.18, 0.28), (0.0, 0.0)),
        "subdural": ((0.9, 1.4), (0.07, 0.11), (0.0, 0.0)),
        "subarachnoid": ((0.8, 1.5), (0.0, 0.0), (0.0, 0.0)),
        "intraparenchymal": ((0.0, 0.0), (0.0, 0.0), (0.16, 0.28)),
        "intraventricular": ((0.0, 0.0), (0.35, 0.65), (0.0, 0.0)),
        "traumatic": ((0.35, 0.5), (0.08, 0.12), (0.06, 0.09)),
    }
    (e0, e1), (d0, d1), (r0, r1) = shapes[kind]
    rho, theta = np.sqrt(rng.uniform(0.02, 0.4)), rng.uniform(0, 2 * np.pi)
    return Bleed(
        kind=kind,
        angle=rng.uniform(-np.pi, np.pi),
        extent=rng.uniform(e0, e1),
        depth=rng.uniform(d0, d1),
        x=rho * np.cos(theta),
        y=rho * np.sin(theta),
        radius=rng.uniform(r0, r1),
        hu=rng.uniform(56, 64) if kind == "subdural" else rng.uniform(66, 80),
    )


@dataclass(frozen=True, slots=True)
class _Polar:
    """Coordinates of every pixel relative to this level's brain ellipse."""

    u: np.ndarray
    v: np.ndarray
    rho: np.ndarray
    theta: np.ndarray
    a: float
    b: float
    px: float


def _polar(anatomy: HeadAnatomy, level: float, size: int) -> _Polar:
    axis = (np.arange(size, dtype=np.float64) + 0.5) / size
    u, v = axis[None, :], axis[:, None]
    scale = np.sqrt(max(0.05, 1.0 - 0.9 * level**2))
    a, b = anatomy.ax * scale, anatomy.ay * scale
    x, y = (u - anatomy.cx) / a, (v - anatomy.cy) / b
    return _Polar(u, v, np.hypot(x, y), np.arctan2(y, x), a, b, 1.0 / size)


def _angular(theta: np.ndarray, centre: float, extent: float, power: int) -> np.ndarray:
    """1 at ``centre``, falling to 0 at ``centre +- extent`` (wrapped angles)."""
    delta = np.angle(np.exp(1j * (theta - centre)))
    return np.clip(1.0 - np.abs(delta / extent) ** power, 0.0, 1.0)


def _draw_head(a: HeadAnatomy, p: _Polar, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Scalp, skull, brain, sulci, fissure, ventricles; return HU and the brain mask."""
    skull_out = 1.0 + a.skull / min(p.a, p.b)
    scalp_out = skull_out + a.scalp / min(p.a, p.b)
    hu = np.full(p.rho.shape, _AIR)
    hu[p.rho < scalp_out] = _SCALP
    hu[p.rho < skull_out] = _BONE
    brain = p.rho < 1.0
    hu[brain] = a.white_hu + (a.grey_hu - a.white_hu) * np.clip((p.rho[brain] - 0.6) / 0.25, 0, 1)
    hu[_sulci(a, p)] = _CSF
    hu[_fissure(a, p)] = _CSF
    if abs(level) < _VENTRICLE_LEVELS:
        hu[_ventricles(a, p, level)] = _CSF
    return hu, brain


def _sulci(a: HeadAnatomy, p: _Polar) -> np.ndarray:
    band = (p.rho > 0.8) & (p.rho < 0.97)
    return band & (np.cos(a.sulci * p.theta + a.sulci_phase) > 0.8)


def _fissure(a: HeadAnatomy, p: _Polar) -> np.ndarray:
    return (np.abs(p.u - a.cx) < 0.6 * p.px + 0.004) & (p.rho < 0.97) & (p.rho > 0.45)


def _ventricles(a: HeadAnatomy, p: _Polar, level: float) -> np.ndarray:
    shrink = np.sqrt(1.0 - (level / _VENTRICLE_LEVELS) ** 2)
    mask = np.zeros(p.rho.shape, dtype=bool)
    for side in (-1.0, 1.0):
        x = (p.u - a.cx - side * a.ventricle_dx) / (a.ventricle_ax * shrink + p.px)
        y = (p.v - a.cy + 0.02) / (a.ventricle_ay * shrink + p.px)
        mask |= np.hypot(x, y) < 1.0
    return mask


def _bleed_mask(a: HeadAnatomy, p: _Polar, level: float, bleed: Bleed) -> np.ndarray:
    """Pixels of one bleed at this level (HU is set by the caller)."""
    inside = p.rho < 1.0
    depth = 1.0 - p.rho
    if bleed.kind in ("epidural", "subdural"):
        power = 2 if bleed.kind == "epidural" else 4
        thickness = bleed.depth * _angular(p.theta, bleed.angle, bleed.extent, power)
        return inside & (depth < thickness)
    if bleed.kind == "subarachnoid":
        sector = _angular(p.theta, bleed.angle, bleed.extent, 2) > 0
        return sector & (_sulci(a, p) | _fissure(a, p))
    if bleed.kind == "intraparenchymal":
        x, y = (p.u - a.cx) / p.a - bleed.x, (p.v - a.cy) / p.b - bleed.y
        wobble = 1.0 + 0.12 * np.sin(3 * np.arctan2(y, x) + bleed.angle)
        return inside & (np.hypot(x, y) < bleed.radius * wobble)
    if bleed.kind == "intraventricular":
        if abs(level) >= _VENTRICLE_LEVELS:
            return np.zeros(p.rho.shape, dtype=bool)
        ventricles = _ventricles(a, p, level)
        rows = np.nonzero(ventricles.any(axis=1))[0]
        cut = rows.min() + (1.0 - bleed.depth) * (rows.max() - rows.min()) if rows.size else 0
        return ventricles & (np.arange(p.rho.shape[0])[:, None] >= cut)
    return inside & _contusions(a, p, bleed)


def _contusions(a: HeadAnatomy, p: _Polar, bleed: Bleed) -> np.ndarray:
    """Two or three cortical contusions under the fracture of a traumatic bleed."""
    mask = np.zeros(p.rho.shape, dtype=bool)
    for k, offset in enumerate((-0.12, 0.0, 0.13)):
        rho_c = 0.82 - 0.06 * (k % 2)
        cx = rho_c * np.cos(bleed.angle + offset)
        cy = rho_c * np.sin(bleed.angle + offset)
        x, y = (p.u - a.cx) / p.a, (p.v - a.cy) / p.b
        mask |= np.hypot(x - cx, y - cy) < bleed.radius
    return mask


def _trauma_outside(a: HeadAnatomy, p: _Polar, hu: np.ndarray, bleed: Bleed) -> None:
    """Skull fracture gap and scalp swelling over a traumatic bleed (in place)."""
    skull_out = 1.0 + a.skull / min(p.a, p.b)
    gap = (p.rho >= 1.0) & (p.rho < skull_out) & (_angular(p.theta, bleed.angle, 0.06, 1) > 0)
    hu[gap] = 45.0
    swelling = bleed.depth * 1.5 * _angular(p.theta, bleed.angle, bleed.extent, 2)
    outside = (p.rho >= skull_out) & (p.rho < skull_out + a.scalp / min(p.a, p.b) + swelling)
    hu[outside] = 52.0


def head_slice(
    anatomy: HeadAnatomy,
    level: float,
    size: int,
    bleeds: Sequence[Bleed],
    rng: np.random.Generator,
) -> HeadSlice:
    """Draw one axial slice at ``level`` with ``bleeds``.

    Args:
        anatomy: The head.
        level: -1 (vertex) to 1 (skull base); the brain is largest at 0.
        size: Rows and columns.
        bleeds: Bleeds to draw (those invisible at this level are not labelled).
        rng: Noise and calcifications.

    Returns:
        The slice in HU with its findings and lesion mask.
    """
    p = _polar(anatomy, level, size)
    hu, _ = _draw_head(anatomy, p, level)
    lesion = np.zeros(hu.shape, dtype=bool)
    found: set[str] = set()
    for bleed in bleeds:
        mask = _bleed_mask(anatomy, p, level, bleed)
        if bleed.kind == "traumatic":
            _trauma_outside(anatomy, p, hu, bleed)
        if mask.sum() >= _MIN_PIXELS * (size / 64) ** 2:
            if bleed.kind == "intraparenchymal":
                rim = _bleed_mask(anatomy, p, level, _grown(bleed)) & ~mask
                hu[rim & (hu > 10) & (hu < 50)] = _OEDEMA
            hu[mask] = bleed.hu
            lesion |= mask
            found.add(bleed.kind)
    _calcifications(anatomy, p, hu, level, rng)
    hu = hu + rng.normal(0.0, rng.uniform(2.0, 4.5), hu.shape)
    findings = frozenset(found | ({"any_haemorrhage"} if found else set()))
    return HeadSlice(hu.astype(np.float32), findings, lesion)


def _grown(bleed: Bleed) -> Bleed:
    return Bleed(bleed.kind, bleed.angle, bleed.extent, bleed.depth, bleed.x, bleed.y, bleed.radius * 1.35, bleed.hu)


def _calcifications(a: HeadAnatomy, p: _Polar, hu: np.ndarray, level: float, rng: np.random.Generator) -> None:
    """Pineal (a bright dot behind the ventricles) and sometimes a falx plaque (in place)."""
    if abs(level) < 0.3 and rng.random() < 0.7:
        dot = np.hypot(p.u - a.cx, p.v - a.cy - 0.16 * p.b / a.ay) < 0.012 + 0.5 * p.px
        hu[dot] = rng.uniform(150, 400)
    if rng.random() < 0.3:
        plaque = (np.abs(p.u - a.cx) < 0.6 * p.px + 0.003) & (np.abs(p.rho - 0.75) < 0.06)
        hu[plaque & (p.v < a.cy)] = rng.uniform(120, 300)


def head_volume(
    rng: np.random.Generator,
    n_slices: int,
    size: int,
    bleeds_by_slice: Mapping[int, Sequence[Bleed]],
    levels: tuple[float, float] = (-0.8, 0.8),
) -> list[HeadSlice]:
    """Draw a stack of slices of one head, ``bleeds_by_slice[k]`` drawn on slice ``k`` only.

    Args:
        rng: Anatomy, noise and calcifications.
        n_slices: Slices, from ``levels[0]`` to ``levels[1]``.
        size: Rows and columns of each slice.
        bleeds_by_slice: Slice index -> bleeds shown on it.
        levels: Level of the first and of the last slice.

    Returns:
        The slices in order.
    """
    anatomy = sample_head(rng)
    steps = np.linspace(levels[0], levels[1], n_slices)
    return [head_slice(anatomy, float(level), size, bleeds_by_slice.get(k, ()), rng) for k, level in enumerate(steps)]
