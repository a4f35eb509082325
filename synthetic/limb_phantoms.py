"""Synthetic limb radiographs with known fractures (numpy only; bright = dense, in [0, 1]).

A phantom is an AP radiograph of a forearm or lower leg: a soft-tissue band along a slightly
tilted axis with one or two long bones (bright cortex, darker medullary cavity with trabecular
texture). A ``fracture`` is a lucent line that crosses one bone completely (transverse to
oblique), with the distal fragment displaced sideways and slightly angulated.

Hard negatives keep the model honest: a nutrient canal (a short lucent line inside one cortex
that does not cross the bone) and skin folds (lucent lines across the soft tissue only) appear
with and without fractures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = ["LIMB_FINDINGS", "LimbImage", "limb_phantom"]

logger = logging.getLogger(__name__)

LIMB_FINDINGS: tuple[str, ...] = ("limb_fracture",)
"""Outputs of the fracture model."""

_AIR, _SOFT = 0.04, 0.3


@dataclass(frozen=True, eq=False)
class LimbImage:
    """One radiograph and its truth.

    Attributes:
        image: float32 ``(size, size)`` in [0, 1].
        findings: ``{"limb_fracture"}`` or empty.
        lesion_mask: bool ``(size, size)``: the fracture line and the cortex next to it.
    """

    image: np.ndarray
    findings: frozenset[str]
    lesion_mask: np.ndarray


@dataclass(frozen=True, slots=True)
class _Frame:
    """Pixel coordinates along (s) and across (t) the limb axis."""

    s: np.ndarray
    t: np.ndarray
    px: float


def _frame(rng: np.random.Generator, size: int) -> _Frame:
    axis = (np.arange(size, dtype=np.float64) + 0.5) / size
    u, v = axis[None, :], axis[:, None]
    phi = rng.uniform(-0.3, 0.3)
    cx, cy = 0.5 + rng.uniform(-0.05, 0.05), 0.5
    s = (u - cx) * np.sin(phi) + (v - cy) * np.cos(phi)
    t = (u - cx) * np.cos(phi) - (v - cy) * np.sin(phi)
    return _Frame(s, t, 1.0 / size)


def _soft(x: np.ndarray, edge: float) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(x / edge))


def _bone(
    f: _Frame, centre: float, half: float, cortex: float, shift: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """Return (whole bone, medulla) soft masks of a tapered long bone."""
    width = half * (1.0 + 0.25 * f.s**2)
    d = np.abs(f.t - centre - shift)
    edge = 0.7 * f.px
    return _soft(width - d, edge), _soft(width * (1.0 - cortex) - d, edge)


def limb_phantom(rng: np.random.Generator, size: int, fracture: bool) -> LimbImage:
    """Draw one limb radiograph, with a fracture of one bone if ``fracture``.

    Args:
        rng: Random generator.
        size: Rows and columns (at least 48).
        fracture: Whether a bone is broken.

    Returns:
        The image and its truth.

    Raises:
        ValueError: If ``size`` is below 48.
    """
    if size < 48:
        raise ValueError(f"Got size {size}; expected at least 48 pixels")
    f = _frame(rng, size)
    width = rng.uniform(0.2, 0.28)
    img = _AIR + (_SOFT - _AIR) * _soft(width - np.abs(f.t), 2 * f.px)
    n_bones = 2 if rng.random() < 0.6 else 1
    centres = [0.0] if n_bones == 1 else [-width * 0.42, width * 0.4]
    broken = int(rng.integers(0, n_bones)) if fracture else -1
    lesion = np.zeros(img.shape, dtype=bool)
    texture = rng.normal(0.0, 0.025, img.shape)
    for index, centre in enumerate(centres):
        half = rng.uniform(0.045, 0.065) * (1.0 if n_bones == 1 else 0.8)
        cortex = rng.uniform(0.25, 0.38)
        if index == broken:
            img, lesion = _broken_bone(rng, f, img, centre, half, cortex, texture)
        else:
            whole, medulla = _bone(f, centre, half, cortex, 0.0)
            img = _paint_bone(img, whole, medulla, texture)
            if rng.random() < 0.35:
                img = _nutrient_canal(rng, f, img, centre, half, cortex)
    img = _skin_folds(rng, f, img, width, centres)
    gamma = rng.uniform(0.9, 1.1)
    noise = rng.normal(0.0, rng.uniform(0.006, 0.015) * size / 128, img.shape)
    image = np.clip(np.clip(img, 0, 1) ** gamma + noise, 0.0, 1.0).astype(np.float32)
    return LimbImage(image, frozenset({"limb_fracture"}) if fracture else frozenset(), lesion)


def _paint_bone(img: np.ndarray, whole: np.ndarray, medulla: np.ndarray, texture: np.ndarray) -> np.ndarray:
    cortex_value, marrow_value = 0.9, 0.56
    img = img * (1 - whole) + cortex_value * whole
    return img * (1 - medulla) + (marrow_value + texture) * medulla


def _broken_bone(
    rng: np.random.Generator,
    f: _Frame,
    img: np.ndarray,
    centre: float,
    half: float,
    cortex: float,
    texture: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """A bone cut by a lucent line; the distal fragment is displaced sideways and angulated."""
    s0, psi = rng.uniform(-0.28, 0.28), rng.uniform(-0.75, 0.75)
    gap = rng.uniform(0.012, 0.02)
    line = (f.s - s0) * np.cos(psi) - (f.t - centre) * np.sin(psi)
    side = 1.0 if rng.random() < 0.5 else -1.0
    offset, tilt = rng.uniform(0.25, 0.7) * half, rng.uniform(0.0, 0.12)
    shift = side * (offset + tilt * np.abs(f.s - s0)) * (line > 0)
    whole, medulla = _bone(f, centre, half, cortex, shift)
    img = _paint_bone(img, whole, medulla, texture)
    cut = _soft(gap / 2 - np.abs(line), 0.5 * f.px) * whole
    img = img * (1 - cut) + (_SOFT + 0.03) * cut
    lesion = (whole > 0.5) & (np.abs(line) < gap / 2 + 2.5 * f.px)
    return img, lesion


def _nutrient_canal(
    rng: np.random.Generator, f: _Frame, img: np.ndarray, centre: float, half: float, cortex: float
) -> np.ndarray:
    """A short oblique lucency inside one cortex only (does not cross the bone)."""
    side = 1.0 if rng.random() < 0.5 else -1.0
    s0 = rng.uniform(-0.3, 0.3)
    along = np.abs(f.s - s0 - 0.6 * (f.t - centre) * side) < 0.004 + 0.4 * f.px
    in_cortex = np.abs(np.abs(f.t - centre) - half * (1 - cortex / 2)) < half * cortex / 2
    mask = along & in_cortex & ((f.t - centre) * side > 0)
    return np.where(mask, img - 0.25, img)


def _skin_folds(rng: np.random.Generator, f: _Frame, img: np.ndarray, width: float, centres: list[float]) -> np.ndarray:
    """Zero to two lucent lines across the soft tissue, stopping short of the bones."""
    for _ in range(int(rng.integers(0, 3))):
        s0, psi = rng.uniform(-0.4, 0.4), rng.uniform(-0.6, 0.6)
        side = 1.0 if rng.random() < 0.5 else -1.0
        line = np.abs((f.s - s0) * np.cos(psi) - f.t * np.sin(psi)) < 0.004 + 0.4 * f.px
        outer = (f.t * side > max(abs(c) for c in centres) + 0.09) & (np.abs(f.t) < width)
        img = np.where(line & outer, img - 0.08, img)
    return img
