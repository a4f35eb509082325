"""Synthetic chest CT angiography volumes in HU with known aortic dissections (numpy only).

The chest is an ellipse of soft tissue in a fat rim, two lungs, a vertebral body and, in the
lower slices, the heart. The contrast-filled aorta runs as the ascending aorta (anterior), the
arch (in the top slices, joining both) and the descending aorta (posterior, beside the spine);
the pulmonary trunk and the superior vena cava are bright too and must not be mistaken for it.

An ``aortic_dissection`` is an intimal flap: a thin, less dense membrane across the lumen
(2.5-4 mm), whose false-lumen side enhances less. Stanford type B involves the descending aorta
only; type A starts in the ascending aorta.

Coordinates are millimetres from the volume centre; the volume is ``(slices, rows, columns)``,
slice 0 at the top (the arch), as :mod:`synthetic.synthetic_series` writes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = ["CTA_FINDINGS", "ChestCtaVolume", "chest_cta_volume"]

logger = logging.getLogger(__name__)

CTA_FINDINGS: tuple[str, ...] = ("aortic_dissection",)
"""Outputs of the chest CTA model."""

_AIR, _FAT, _SOFT, _LUNG, _BONE = -1000.0, -100.0, 40.0, -850.0, 650.0


@dataclass(frozen=True, eq=False)
class ChestCtaVolume:
    """One CTA volume and its truth.

    Attributes:
        hu: float32 ``(slices, rows, columns)``.
        findings: ``{"aortic_dissection"}`` or empty.
        lesion_mask: bool, the flap inside the lumen.
    """

    hu: np.ndarray
    findings: frozenset[str]
    lesion_mask: np.ndarray


@dataclass(frozen=True, slots=True)
class _Vessels:
    """In-plane centres (x, y) and radii (mm) of the great vessels."""

    ascending: tuple[float, float]
    descending: tuple[float, float]
    r_ascending: float
    r_descending: float
    arch_slices: int
    lumen_hu: float


def _plane_grid(rows: int, cols: int, spacing: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    y = (np.arange(rows) - (rows - 1) / 2) * spacing[0]
    x = (np.arange(cols) - (cols - 1) / 2) * spacing[1]
    return y[:, None], x[None, :]


def chest_cta_volume(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    dissection: bool,
) -> ChestCtaVolume:
    """Draw one chest CTA volume, with an aortic dissection if ``dissection``.

    Args:
        rng: Random generator.
        shape: (slices, rows, columns).
        spacing: (slice, row, column) spacing in mm.
        dissection: Whether to draw a flap.

    Returns:
        The volume and its truth.
    """
    y, x = _plane_grid(shape[1], shape[2], spacing[1:])
    v = _Vessels(
        ascending=(rng.uniform(8, 16), rng.uniform(-28, -18)),
        descending=(rng.uniform(-30, -22), rng.uniform(28, 36)),
        r_ascending=rng.uniform(15, 19),
        r_descending=rng.uniform(12, 15),
        arch_slices=max(2, int(shape[0] * rng.uniform(0.12, 0.2))),
        lumen_hu=rng.uniform(280, 420),
    )
    body = (rng.uniform(105, 118), rng.uniform(78, 88))
    hu = np.empty(shape, dtype=np.float64)
    lesion = np.zeros(shape, dtype=bool)
    plan = _dissection_plan(rng, shape[0], v) if dissection else None
    for k in range(shape[0]):
        hu[k] = _slice(rng, k, shape[0], y, x, v, body)
        if plan is not None and plan.first <= k < plan.end:
            lesion[k] = _flap(hu[k], k, y, x, v, plan)
    hu += rng.normal(0.0, rng.uniform(10, 18), hu.shape)
    findings = frozenset({"aortic_dissection"}) if dissection else frozenset()
    return ChestCtaVolume(hu.astype(np.float32), findings, lesion)


def _disc(y: np.ndarray, x: np.ndarray, c: tuple[float, float], r: float) -> np.ndarray:
    return np.hypot(x - c[0], y - c[1]) < r


def _slice(
    rng: np.random.Generator,
    k: int,
    n: int,
    y: np.ndarray,
    x: np.ndarray,
    v: _Vessels,
    body: tuple[float, float],
) -> np.ndarray:
    """One axial slice without a flap."""
    rho = np.hypot(x / body[0], y / body[1])
    hu = np.where(rho < 1.0, _FAT, _AIR)
    hu[rho < 0.9] = _SOFT
    for side in (-1.0, 1.0):
        hu[np.hypot((x - side * 55) / 42, (y + 2) / 58) < 1.0] = _LUNG
    hu[_disc(y, x, (0.0, 58.0), 17.0)] = _BONE
    if k > n * 0.65:
        hu[np.hypot((x - 12) / 55, (y + 18) / 42) < 1.0] = 55.0
        hu[np.hypot((x - 5) / 25, (y + 22) / 20) < 1.0] = v.lumen_hu * 0.8
    elif k >= v.arch_slices:
        hu[_disc(y, x, (v.ascending[0] - 26, v.ascending[1] + 2), 12.0)] = v.lumen_hu * 0.85
        hu[_disc(y, x, (v.ascending[0] + 20, v.ascending[1] + 4), 8.0)] = v.lumen_hu * 1.3
    for mask in _aorta(k, y, x, v):
        hu[mask] = v.lumen_hu
    return hu


def _aorta(k: int, y: np.ndarray, x: np.ndarray, v: _Vessels) -> list[np.ndarray]:
    """Lumen masks of the aorta on slice ``k``: the arch on top, else two round sections."""
    if k < v.arch_slices:
        a, d = np.array(v.ascending), np.array(v.descending)
        direction = (d - a) / np.linalg.norm(d - a)
        t = np.clip((x - a[0]) * direction[0] + (y - a[1]) * direction[1], 0, np.linalg.norm(d - a))
        dist = np.hypot(x - a[0] - t * direction[0], y - a[1] - t * direction[1])
        return [dist < (v.r_ascending + v.r_descending) / 2]
    return [_disc(y, x, v.ascending, v.r_ascending), _disc(y, x, v.descending, v.r_descending)]


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where the flap runs: slices ``[first, end)``, Stanford type, angle, offset, contrast."""

    first: int
    end: int
    kind: str
    angle: float
    offset: float
    false_lumen: float
    thickness: float
    flap_hu: float


def _dissection_plan(rng: np.random.Generator, n: int, v: _Vessels) -> _Plan:
    kind = "A" if rng.random() < 0.4 else "B"
    if kind == "A":
        first = int(rng.integers(0, v.arch_slices))
    else:
        first = int(rng.integers(v.arch_slices, max(v.arch_slices + 1, n // 2)))
    length = int(rng.integers(max(4, n // 4), max(5, n - first + 1)))
    return _Plan(
        first,
        min(n, first + length),
        kind,
        rng.uniform(0, np.pi),
        rng.uniform(-0.3, 0.3),
        rng.uniform(0.45, 0.75),
        rng.uniform(2.5, 4.0),
        rng.uniform(60, 100),
    )


def _sections(
    k: int, y: np.ndarray, x: np.ndarray, v: _Vessels, plan: _Plan
) -> list[tuple[np.ndarray, tuple[float, float], float, tuple[float, float]]]:
    """(lumen, centre, radius, flap normal) of each aortic section the flap crosses."""
    theta = plan.angle + 0.015 * k
    normal = (float(np.cos(theta)), float(np.sin(theta)))
    lumens = _aorta(k, y, x, v)
    if k < v.arch_slices:
        a, d = np.array(v.ascending), np.array(v.descending)
        direction = (d - a) / np.linalg.norm(d - a)
        centre = (float((a[0] + d[0]) / 2), float((a[1] + d[1]) / 2))
        radius = (v.r_ascending + v.r_descending) / 2
        return [(lumens[0], centre, radius, (float(-direction[1]), float(direction[0])))]
    sections = [(lumens[1], v.descending, v.r_descending, normal)]
    if plan.kind == "A":
        sections.append((lumens[0], v.ascending, v.r_ascending, normal))
    return sections


def _flap(hu: np.ndarray, k: int, y: np.ndarray, x: np.ndarray, v: _Vessels, plan: _Plan) -> np.ndarray:
    """Draw the flap (and the dimmer false lumen) on one slice; return the flap mask."""
    flap = np.zeros(hu.shape, dtype=bool)
    for lumen, centre, radius, normal in _sections(k, y, x, v, plan):
        signed = (x - centre[0]) * normal[0] + (y - centre[1]) * normal[1] - plan.offset * radius
        hu[lumen & (signed > plan.thickness / 2)] = v.lumen_hu * plan.false_lumen
        here = lumen & (np.abs(signed) <= plan.thickness / 2)
        hu[here] = plan.flap_hu
        flap |= here
    return flap
