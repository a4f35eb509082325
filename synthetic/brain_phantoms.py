"""Synthetic post-contrast T1 brain MR volumes with known tumours (numpy only).

The head is an ellipsoid of scalp fat (bright), skull (dark), a CSF rim, grey matter and white
matter, with two lateral ventricles. Normal enhancing structures are always there to be
ignored: the superior sagittal sinus (a bright tube along the midline) and choroid plexus (small
bright blobs in the ventricles). A ``brain_tumour`` is a ring-enhancing mass (bright rim,
necrotic core) or a solid enhancing one, inside a dark oedema halo. Noise is Rician (magnitude
of complex Gaussian noise) over a smooth bias field, as in real magnitude MR images.

Coordinates are millimetres on voxel centres; the volume is ``(slices, rows, columns)`` with
slice ``k`` at ``z = -k * spacing[0]`` (as :mod:`synthetic.synthetic_series` writes it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = ["BRAIN_FINDINGS", "BrainVolume", "brain_volume"]

logger = logging.getLogger(__name__)

BRAIN_FINDINGS: tuple[str, ...] = ("brain_tumour",)
"""Outputs of the brain MR model."""

_FAT, _SKULL, _CSF, _GREY, _WHITE = 900.0, 60.0, 160.0, 450.0, 580.0
_ENHANCING, _NECROSIS, _OEDEMA = 1200.0, 230.0, 340.0


@dataclass(frozen=True, eq=False)
class BrainVolume:
    """One volume and its truth.

    Attributes:
        values: float32 ``(slices, rows, columns)``, arbitrary MR units (>= 0).
        findings: ``{"brain_tumour"}`` or empty.
        lesion_mask: bool, the tumour (rim and core).
        centre_mm: Tumour centre (x, y, z) in the volume's millimetre grid, or None.
    """

    values: np.ndarray
    findings: frozenset[str]
    lesion_mask: np.ndarray
    centre_mm: tuple[float, float, float] | None


def _grid(
    shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, y, x) millimetres of every voxel centre, the volume centre at 0."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def _ellipsoid(z: np.ndarray, y: np.ndarray, x: np.ndarray, c: tuple[float, ...], r: tuple[float, ...]) -> np.ndarray:
    return np.sqrt(((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2)


def brain_volume(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    tumour: bool,
) -> BrainVolume:
    """Draw one brain volume, with a tumour if ``tumour``.

    Args:
        rng: Random generator.
        shape: (slices, rows, columns).
        spacing: (slice, row, column) spacing in mm.
        tumour: Whether to draw a tumour.

    Returns:
        The volume and its truth.
    """
    z, y, x = _grid(shape, spacing)
    head = (rng.uniform(68, 76), rng.uniform(86, 94), rng.uniform(62, 72))
    centre = (rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(-5, 5))
    rho = _ellipsoid(z, y, x, centre, head)
    values = np.zeros(np.broadcast_shapes(z.shape, y.shape, x.shape))
    values[rho < 1.0] = _FAT
    values[rho < 0.93] = _SKULL
    values[rho < 0.86] = _CSF
    values[rho < 0.83] = _GREY
    values[rho < 0.74] = _WHITE
    ventricles = np.zeros(values.shape, dtype=bool)
    for side in (-1.0, 1.0):
        c = (centre[0] + side * 11.0, centre[1] - 5.0, centre[2] + 8.0)
        ventricles |= _ellipsoid(z, y, x, c, (6.0, 24.0, 12.0)) < 1.0
    values[ventricles] = _CSF
    _normal_enhancement(rng, values, z, y, x, centre, head, ventricles)
    lesion = np.zeros(values.shape, dtype=bool)
    where = None
    if tumour:
        lesion, where = _tumour(rng, values, z, y, x, centre, head)
    values = _rician(rng, values * _bias(rng, z, y, x))
    return BrainVolume(
        values.astype(np.float32),
        frozenset({"brain_tumour"}) if tumour else frozenset(),
        lesion,
        where,
    )


def _normal_enhancement(
    rng: np.random.Generator,
    values: np.ndarray,
    z: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    centre: tuple[float, float, float],
    head: tuple[float, float, float],
    ventricles: np.ndarray,
) -> None:
    """Superior sagittal sinus and choroid plexus: bright, normal, always present."""
    rho_yz = np.sqrt(((y - centre[1]) / head[1]) ** 2 + ((z - centre[2]) / head[2]) ** 2)
    sinus = (np.abs(x - centre[0]) < 3.5) & (np.abs(rho_yz - 0.84) < 0.03) & (z > centre[2] - 10)
    values[np.broadcast_to(sinus, values.shape)] = _ENHANCING * rng.uniform(0.8, 1.0)
    for side in (-1.0, 1.0):
        c = (centre[0] + side * 11.0, centre[1] + 10.0, centre[2] + 6.0)
        plexus = (_ellipsoid(z, y, x, c, (3.0, 4.0, 3.0)) < 1.0) & ventricles
        values[plexus] = _ENHANCING * rng.uniform(0.7, 0.95)


def _tumour(
    rng: np.random.Generator,
    values: np.ndarray,
    z: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    centre: tuple[float, float, float],
    head: tuple[float, float, float],
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A ring-enhancing or solid mass with oedema, inside the white matter."""
    radius = rng.uniform(11.0, 19.0)
    for _ in range(100):
        offset = rng.uniform(-1, 1, 3) * np.array(head) * 0.5
        if np.linalg.norm(offset / np.array(head)) < 0.5:
            break
    c = (centre[0] + offset[0], centre[1] + offset[1], centre[2] + offset[2])
    d = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
    wobble = 1.0 + 0.1 * np.sin(3.0 * np.arctan2(y - c[1], x - c[0]) + rng.uniform(0, 6.3))
    d = d / wobble
    brain = values > _CSF + 1
    values[(d < radius * 1.7) & brain] = _OEDEMA
    mass = d < radius
    values[mass] = _ENHANCING * rng.uniform(0.85, 1.05)
    if rng.random() < 0.7:
        values[d < radius - rng.uniform(3.5, 5.0)] = _NECROSIS
    return mass, (float(c[0]), float(c[1]), float(c[2]))


def _bias(rng: np.random.Generator, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A smooth multiplicative field (receive-coil inhomogeneity), 0.85-1.15."""
    g = rng.uniform(-1, 1, 3) * 0.0012
    return 1.0 + g[0] * x + g[1] * y + g[2] * z


def _rician(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    sigma = rng.uniform(15.0, 35.0)
    real = values + rng.normal(0.0, sigma, values.shape)
    imaginary = rng.normal(0.0, sigma, values.shape)
    return np.hypot(real, imaginary)
