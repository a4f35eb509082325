"""Synthetic chest radiograph phantoms with known lesions (pure numpy, no patient data).

A phantom is a frontal (PA) chest radiograph drawn from simple shapes: body outline, two dark lung
fields with vascular markings, mediastinum, heart and spine, faint rib stripes, and noise. Bright
means dense (MONOCHROME2). Six findings have a visible, learnable signal:

- ``nodule``: one or two small, dense, round bright discs inside the lung fields.
- ``mass``: one large, lobulated, fainter disc inside a lung field.
- ``effusion``: fluid filling one lung base, its surface rising laterally (a meniscus).
- ``cardiomegaly``: a heart wider than half the thorax (cardiothoracic ratio > 0.5).
- ``pneumothorax``: a dark, marking-free rim at the apex and lateral edge of one lung, bounded by
  a thin bright visceral pleural line.
- ``tension_pneumothorax``: a large pneumothorax with the mediastinum and heart shifted to the
  other side. It implies ``pneumothorax``.

Every other label of ``CXR_FINDINGS`` has no phantom signal; training data never has it positive.
The anatomy depends only on the generator's state, not on which findings are drawn, so the same
seed with and without a finding differs only where the finding is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CXR_FINDINGS",
    "PHANTOM_FINDINGS",
    "PhantomImage",
    "chest_phantom",
    "implied_findings",
    "sample_findings",
]

logger = logging.getLogger(__name__)

CXR_FINDINGS: tuple[str, ...] = (
    "atelectasis",
    "consolidation",
    "infiltration",
    "pneumothorax",
    "edema",
    "emphysema",
    "fibrosis",
    "effusion",
    "pneumonia",
    "pleural_thickening",
    "cardiomegaly",
    "nodule",
    "mass",
    "hernia",
    "lung_lesion",
    "fracture",
    "lung_opacity",
    "enlarged_cardiomediastinum",
    "tension_pneumothorax",
)
"""The chest X-ray outputs in network order: the 18 common public labels, then the critical
``tension_pneumothorax``."""

PHANTOM_FINDINGS: tuple[str, ...] = (
    "nodule",
    "mass",
    "effusion",
    "cardiomegaly",
    "pneumothorax",
    "tension_pneumothorax",
)
"""Findings that a phantom can show (the others are never positive in synthetic data)."""

_REFERENCE_SIZE = 128
"""Pixels across the image at which edge widths and noise have their nominal values. Edges are
as wide (and noise per unit area as strong) at any size, so a phantom drawn at 512 and shrunk
to 128 looks like one drawn at 128: what the network learns does not depend on the DICOM size."""

_AIR = 0.03
_SOFT_TISSUE = 0.55
_LUNG = 0.22
_FLUID = 0.62
_PTX = 0.09
_MEDIASTINUM = 0.68


@dataclass(frozen=True, eq=False)
class PhantomImage:
    """One synthetic radiograph and its ground truth.

    Attributes:
        image: float32 ``(size, size)`` in [0, 1]; bright is dense (MONOCHROME2).
        findings: The findings it shows (``tension_pneumothorax`` brings ``pneumothorax``).
        lesion_mask: bool ``(size, size)``, the union of focal lesions (nodules, mass).
        lung_mask: bool ``(size, size)``, the visible lung fields (pleural cavities).
    """

    image: np.ndarray
    findings: frozenset[str]
    lesion_mask: np.ndarray
    lung_mask: np.ndarray


@dataclass(frozen=True, slots=True)
class _Ellipse:
    cx: float
    cy: float
    ax: float
    ay: float

    def rho(self, g: _Grid) -> np.ndarray:
        """Normalised radius: < 1 inside."""
        return np.hypot((g.u - self.cx) / self.ax, (g.v - self.cy) / self.ay)

    def soft(self, g: _Grid, edge: float | None = None) -> np.ndarray:
        """Anti-aliased inside mask in [0, 1]."""
        distance = (self.rho(g) - 1.0) * min(self.ax, self.ay)
        return _sigmoid(-distance / (edge or g.edge))


@dataclass(frozen=True, slots=True)
class _Grid:
    u: np.ndarray
    v: np.ndarray
    edge: float

    @classmethod
    def of(cls, size: int) -> _Grid:
        """The grid of a ``size`` image; edges keep one physical width at every resolution."""
        axis = (np.arange(size, dtype=np.float64) + 0.5) / size
        return cls(axis[None, :], axis[:, None], max(0.7 / _REFERENCE_SIZE, 0.5 / size))


@dataclass(frozen=True, slots=True)
class _Anatomy:
    body: _Ellipse
    thorax: _Ellipse
    lungs: tuple[_Ellipse, _Ellipse]
    heart: _Ellipse
    mediastinum_x: float
    mediastinum_half_width: float


@dataclass(frozen=True, slots=True)
class _Lesion:
    radius: tuple[float, float]
    """Range of radii, as a fraction of the image width."""
    contrast: tuple[float, float]
    """Range of added brightness."""
    lobulation: float
    """Relative amplitude of the three-lobed outline."""
    count: tuple[int, int]
    """Least and most lesions drawn."""


_LESIONS = {
    # Nodules are small, round and dense (calcified-looking), one or two; a mass is single,
    # large, lobulated and fainter. Brightness, shape and count as well as size tell them apart.
    "nodule": _Lesion(radius=(0.03, 0.038), contrast=(0.44, 0.52), lobulation=0.0, count=(1, 2)),
    "mass": _Lesion(radius=(0.065, 0.08), contrast=(0.3, 0.36), lobulation=0.15, count=(1, 1)),
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def sample_findings(rng: np.random.Generator, prevalence: float = 0.3) -> frozenset[str]:
    """Draw a finding set; each phantom finding is positive about ``prevalence`` of the time.

    Pneumothorax is drawn as none, simple (0.7 ``prevalence``) or tension (0.7 ``prevalence``),
    so the ``pneumothorax`` label, which every tension case carries too, is positive about
    1.4 ``prevalence`` of the time.

    Args:
        rng: Random generator.
        prevalence: Probability of each independent finding.

    Returns:
        The findings, as accepted by :func:`chest_phantom`.
    """
    independent = ("nodule", "mass", "effusion", "cardiomegaly")
    chosen = {key for key in independent if rng.random() < prevalence}
    draw = rng.random()
    if draw < prevalence * 0.7:
        chosen.add("tension_pneumothorax")
    elif draw < prevalence * 1.4:
        chosen.add("pneumothorax")
    return frozenset(chosen)


def implied_findings(findings: frozenset[str]) -> frozenset[str]:
    """Return ``findings`` with what they imply (``tension_pneumothorax`` -> ``pneumothorax``).

    >>> sorted(implied_findings(frozenset({"tension_pneumothorax"})))
    ['pneumothorax', 'tension_pneumothorax']
    """
    extra = {"pneumothorax"} if "tension_pneumothorax" in findings else set()
    return frozenset(findings) | extra


def chest_phantom(rng: np.random.Generator, size: int, findings: frozenset[str]) -> PhantomImage:
    """Draw a frontal chest radiograph phantom showing exactly ``findings``.

    Args:
        rng: Random generator; the anatomy and the noise depend only on its state.
        size: Width and height in pixels (at least 32).
        findings: A subset of ``PHANTOM_FINDINGS``.

    Returns:
        The phantom with its ground truth.

    Raises:
        ValueError: If ``size`` is below 32 or a finding has no phantom signal (or, in theory,
            if no place in the lungs fits a lesion after 500 draws).
    """
    unknown = sorted(set(findings) - set(PHANTOM_FINDINGS))
    if unknown:
        raise ValueError(f"Got findings {unknown}; a phantom can show only {list(PHANTOM_FINDINGS)}")
    if size < 32:
        raise ValueError(f"Got size {size}; expected at least 32 pixels")
    shown = set(implied_findings(findings))
    anatomy_rng, noise_rng, finding_rng = rng.spawn(3)
    g = _Grid.of(size)
    anatomy, side = _sample_anatomy(anatomy_rng, shown)
    texture = 0.03 * _smooth_noise(anatomy_rng, size, 10)
    texture += 0.015 * _smooth_noise(anatomy_rng, size, 24)
    # Quantum noise per unit area is fixed, so per pixel it grows with the resolution: an image
    # drawn at 256 and shrunk to 128 looks like one drawn at 128 (and so does the network input).
    gamma, gain = noise_rng.uniform(0.85, 1.15), noise_rng.uniform(0.9, 1.1)
    sigma = noise_rng.uniform(0.008, 0.025) * size / _REFERENCE_SIZE
    noise = noise_rng.normal(0.0, sigma, (size, size))
    rngs = dict(zip(PHANTOM_FINDINGS, finding_rng.spawn(len(PHANTOM_FINDINGS)), strict=True))
    img, lungs = _draw_chest(g, anatomy, texture)
    if "pneumothorax" in shown:
        img = _draw_pneumothorax(g, img, anatomy.lungs[side], side, rngs["pneumothorax"], shown)
    if "effusion" in shown:
        img = _draw_effusion(g, img, anatomy, rngs["effusion"])
    img, mediastinum = _draw_mediastinum(g, img, anatomy)
    lung_mask = (lungs > 0.5) & (mediastinum < 0.5)
    lesions = np.zeros((size, size), dtype=bool)
    for key, lesion in _LESIONS.items():
        if key in shown:
            img, mask = _draw_lesion(g, img, anatomy, rngs[key], lesion)
            lesions |= mask
    img = img + _ribs(g, anatomy)
    img = np.clip(img, 0.0, 1.0) ** gamma * gain + noise
    image = np.clip(img, 0.0, 1.0).astype(np.float32)
    return PhantomImage(image, frozenset(shown), lesions, lung_mask)


def _sample_anatomy(rng: np.random.Generator, shown: set[str]) -> tuple[_Anatomy, int]:
    """Return the anatomy and the side (0: image left, 1: image right) of one-sided findings."""
    cx, cy = 0.5 + rng.uniform(-0.02, 0.02), 0.5 + rng.uniform(-0.02, 0.02)
    ax, ay = rng.uniform(0.36, 0.41), rng.uniform(0.38, 0.42)
    lung_ax, lung_ay = ax * rng.uniform(0.36, 0.40), ay * rng.uniform(0.72, 0.8)
    lung_dx, lung_cy = ax * rng.uniform(0.48, 0.52), cy - ay * 0.1
    ctr_normal, ctr_large = rng.uniform(0.36, 0.44), rng.uniform(0.56, 0.64)
    shift, side = rng.uniform(0.07, 0.1), int(rng.integers(0, 2))
    ctr = ctr_large if "cardiomegaly" in shown else ctr_normal
    mx = cx + (shift * (1 if side == 0 else -1) if "tension_pneumothorax" in shown else 0.0)
    lungs = (
        _Ellipse(cx - lung_dx, lung_cy, lung_ax, lung_ay),
        _Ellipse(cx + lung_dx, lung_cy + 0.01, lung_ax * 0.95, lung_ay * 0.97),
    )
    heart = _Ellipse(mx + ax * 0.12, cy + ay * 0.42, ctr * ax, ay * 0.22 * (1 + ctr))
    anatomy = _Anatomy(
        body=_Ellipse(cx, cy + 0.08, ax * 1.12, 0.62),
        thorax=_Ellipse(cx, cy, ax, ay),
        lungs=lungs,
        heart=heart,
        mediastinum_x=mx,
        mediastinum_half_width=ax * rng.uniform(0.15, 0.19),
    )
    return anatomy, side


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise in about [-1, 1]: a coarse grid, bilinearly upsampled."""
    coarse = rng.normal(0.0, 1.0, (cells + 1, cells + 1))
    pos = (np.arange(size) + 0.5) / size * cells
    i = np.minimum(pos.astype(int), cells - 1)
    f = pos - i
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _draw_chest(g: _Grid, a: _Anatomy, texture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Body and lung fields with vascular markings; return the image and the soft lung mask."""
    img = _AIR + (_SOFT_TISSUE - _AIR) * a.body.soft(g, 3 * g.edge)
    lungs = np.maximum(a.lungs[0].soft(g, 2 * g.edge), a.lungs[1].soft(g, 2 * g.edge))
    top = a.thorax.cy - a.thorax.ay
    base_gradient = 0.07 * np.clip((g.v - top) / (2 * a.thorax.ay), 0.0, 1.0)
    lung_value = _LUNG + base_gradient + texture
    return img * (1 - lungs) + lung_value * lungs, lungs


def _draw_pneumothorax(
    g: _Grid,
    img: np.ndarray,
    lung: _Ellipse,
    side: int,
    rng: np.random.Generator,
    shown: set[str],
) -> np.ndarray:
    """Replace the apical and lateral rim of ``lung`` by marking-free air with a pleural line."""
    k = rng.uniform(0.5, 0.6) if "tension_pneumothorax" in shown else rng.uniform(0.68, 0.8)
    lateral = -1.0 if side == 0 else 1.0
    collapsed = _Ellipse(
        lung.cx - lateral * lung.ax * (1 - k) * 0.8,
        lung.cy + lung.ay * (1 - k) * 0.7,
        lung.ax * k,
        lung.ay * k,
    )
    pleural_space = lung.soft(g) * (1 - collapsed.soft(g))
    img = img * (1 - pleural_space) + _PTX * pleural_space
    width = max(0.9 / _REFERENCE_SIZE, 0.6 / img.shape[0])
    offset = (collapsed.rho(g) - 1.0) * min(collapsed.ax, collapsed.ay)
    line = np.exp(-((offset / width) ** 2)) * lung.soft(g)
    return img + 0.2 * line


def _draw_effusion(g: _Grid, img: np.ndarray, a: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Fill one lung base with fluid whose surface rises towards the chest wall (meniscus)."""
    side = int(rng.integers(0, 2))
    lung = a.lungs[side]
    lateral = -1.0 if side == 0 else 1.0
    level = lung.cy + lung.ay * rng.uniform(0.1, 0.45)
    outward = np.clip((g.u - lung.cx) * lateral / lung.ax, 0.0, 1.0)
    surface = level - 0.3 * lung.ay * outward**2
    fluid = lung.soft(g, 2 * g.edge) * _sigmoid((g.v - surface) / (3 * g.edge))
    value = _FLUID + 0.05 * np.clip((g.v - level) / lung.ay, 0.0, 1.0)
    return img * (1 - fluid) + value * fluid


def _draw_mediastinum(g: _Grid, img: np.ndarray, a: _Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Draw mediastinum, heart and spine over the lungs; return the image and their soft mask."""
    dx = np.abs(g.u - a.mediastinum_x)
    top = a.thorax.cy - a.thorax.ay * 1.2
    column = (
        _sigmoid((a.mediastinum_half_width - dx) / g.edge)
        * _sigmoid((g.v - top) / g.edge)
        * _sigmoid((a.heart.cy - g.v) / g.edge)
    )
    solid = np.maximum(column, a.heart.soft(g, 1.5 * g.edge))
    img = img * (1 - solid) + _MEDIASTINUM * solid
    spine = _sigmoid((0.03 - dx) / (2 * g.edge)) * a.body.soft(g)
    return img + 0.05 * spine, solid


def _draw_lesion(
    g: _Grid, img: np.ndarray, a: _Anatomy, rng: np.random.Generator, lesion: _Lesion
) -> tuple[np.ndarray, np.ndarray]:
    """Add bright discs well inside the lung fields, clear of the heart; return image and mask."""
    mask = np.zeros(img.shape, dtype=bool)
    for _ in range(int(rng.integers(lesion.count[0], lesion.count[1] + 1))):
        radius = rng.uniform(*lesion.radius)
        cx, cy = _point_in_lung(rng, a, radius * (1 + lesion.lobulation), 2 * g.edge)
        angle = np.arctan2(g.v - cy, g.u - cx)
        wobble = 1.0 + lesion.lobulation * np.sin(3 * angle + rng.uniform(0, 2 * np.pi))
        distance = np.hypot(g.u - cx, g.v - cy) - radius * wobble
        img = img + rng.uniform(*lesion.contrast) * _sigmoid(-distance / (1.5 * g.edge))
        mask |= distance < 0
    return img, mask


def _point_in_lung(rng: np.random.Generator, a: _Anatomy, radius: float, margin: float) -> tuple[float, float]:
    """A centre for a disc of ``radius`` that lies in a lung field, off mediastinum and heart."""
    circle = np.linspace(0.0, 2 * np.pi, 24, endpoint=False)
    reach = radius + margin
    for _ in range(500):
        lung = a.lungs[int(rng.integers(0, 2))]
        r, t = np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
        x, y = lung.cx + lung.ax * r * np.cos(t), lung.cy + lung.ay * r * np.sin(t)
        px = np.append(x + reach * np.cos(circle), x)
        py = np.append(y + reach * np.sin(circle), y)
        in_lung = np.hypot((px - lung.cx) / lung.ax, (py - lung.cy) / lung.ay) < 1
        off_column = (np.abs(px - a.mediastinum_x) > a.mediastinum_half_width) | (py > a.heart.cy)
        off_heart = np.hypot((px - a.heart.cx) / a.heart.ax, (py - a.heart.cy) / a.heart.ay) > 1
        if np.all(in_lung & off_column & off_heart):
            return float(x), float(y)
    raise ValueError(f"No site for a lesion of radius {radius:.3f} in this anatomy")


def _ribs(g: _Grid, a: _Anatomy) -> np.ndarray:
    """Faint posterior rib stripes, curving down laterally, over the thorax."""
    phase = (g.v - 1.2 * (g.u - a.thorax.cx) ** 2) / 0.075
    stripes = np.clip((np.sin(2 * np.pi * phase) - 0.35) / 0.65, 0.0, 1.0)
    return 0.045 * stripes * a.thorax.soft(g, 4 * g.edge)
