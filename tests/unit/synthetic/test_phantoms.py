"""Phantoms show the lesions they promise, and only those."""

from __future__ import annotations

import numpy as np
import pytest

from core.findings import CATALOGUE
from synthetic.phantoms import (
    CXR_FINDINGS,
    PHANTOM_FINDINGS,
    chest_phantom,
    sample_findings,
)

SIZE = 128


def _pair(seed: int, finding: str) -> tuple[np.ndarray, np.ndarray]:
    """The same anatomy without and with ``finding``."""
    rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
    plain = chest_phantom(rng_a, SIZE, frozenset()).image
    return plain, chest_phantom(rng_b, SIZE, frozenset({finding})).image


def test_label_set_is_the_18_public_labels_then_tension_pneumothorax() -> None:
    assert len(CXR_FINDINGS) == 19 and len(set(CXR_FINDINGS)) == 19
    assert CXR_FINDINGS[3] == "pneumothorax" and CXR_FINDINGS[-1] == "tension_pneumothorax"
    assert set(CXR_FINDINGS) <= set(CATALOGUE)
    assert set(PHANTOM_FINDINGS) <= set(CXR_FINDINGS)


def test_image_is_float32_in_unit_range_and_deterministic() -> None:
    a = chest_phantom(np.random.default_rng(7), SIZE, frozenset({"nodule"}))
    b = chest_phantom(np.random.default_rng(7), SIZE, frozenset({"nodule"}))
    assert a.image.dtype == np.float32 and a.image.shape == (SIZE, SIZE)
    assert 0.0 <= a.image.min() and a.image.max() <= 1.0
    np.testing.assert_array_equal(a.image, b.image)
    assert a.lesion_mask.dtype == np.bool_ and a.lung_mask.dtype == np.bool_


def test_lungs_are_darker_than_the_mediastinum() -> None:
    p = chest_phantom(np.random.default_rng(1), SIZE, frozenset())
    centre_column = p.image[SIZE // 4 : SIZE // 2, SIZE // 2 - 2 : SIZE // 2 + 2]
    assert p.image[p.lung_mask].mean() + 0.2 < centre_column.mean()
    assert not p.lesion_mask.any()


@pytest.mark.parametrize("finding", ["nodule", "mass"])
@pytest.mark.parametrize("seed", range(12))
def test_focal_lesion_is_inside_a_lung_and_brighter(finding: str, seed: int) -> None:
    p = chest_phantom(np.random.default_rng(seed), SIZE, frozenset({finding}))
    assert p.lesion_mask.sum() > 10
    assert np.all(p.lung_mask[p.lesion_mask]), "the lesion leaves the lung field"
    surrounding = p.lung_mask & ~p.lesion_mask
    assert p.image[p.lesion_mask].mean() > p.image[surrounding].mean() + 0.1


def test_mass_is_larger_than_nodule() -> None:
    sizes = {
        key: np.mean(
            [chest_phantom(np.random.default_rng(s), SIZE, frozenset({key})).lesion_mask.sum() for s in range(8)]
        )
        for key in ("nodule", "mass")
    }
    assert sizes["mass"] > 2.5 * sizes["nodule"]


def test_effusion_whitens_a_lung_base_only() -> None:
    plain, sick = _pair(3, "effusion")
    diff = sick - plain
    upper, lower = diff[: int(SIZE * 0.35)], diff[SIZE // 2 :]
    assert lower.max() > 0.25
    assert np.abs(upper).max() < 0.05


def test_cardiomegaly_widens_the_heart() -> None:
    plain, sick = _pair(4, "cardiomegaly")
    row = slice(int(SIZE * 0.66), int(SIZE * 0.72))
    bright_width = [(img[row] > 0.5).sum(axis=1).mean() for img in (plain, sick)]
    assert bright_width[1] > bright_width[0] + SIZE * 0.08


def test_pneumothorax_darkens_the_lung_rim() -> None:
    p_plain = chest_phantom(np.random.default_rng(5), SIZE, frozenset())
    plain, sick = _pair(5, "pneumothorax")
    diff = (sick - plain)[p_plain.lung_mask]
    assert (diff < -0.08).sum() > 100, "no dark pleural air"
    assert (diff > 0.08).sum() > 10, "no visceral pleural line"


def test_tension_pneumothorax_implies_pneumothorax_and_shifts_the_mediastinum() -> None:
    p = chest_phantom(np.random.default_rng(6), SIZE, frozenset({"tension_pneumothorax"}))
    assert p.findings == {"tension_pneumothorax", "pneumothorax"}
    plain, sick = _pair(6, "tension_pneumothorax")
    band = slice(int(SIZE * 0.25), int(SIZE * 0.45))

    def centre(img: np.ndarray) -> float:
        weights = np.clip(img[band] - 0.5, 0, None).sum(axis=0)
        return float((weights * np.arange(SIZE)).sum() / weights.sum())

    assert abs(centre(sick) - centre(plain)) > SIZE * 0.04


def test_unknown_or_signal_free_finding_is_refused() -> None:
    with pytest.raises(ValueError, match="edema"):
        chest_phantom(np.random.default_rng(0), SIZE, frozenset({"edema"}))
    with pytest.raises(ValueError, match="size"):
        chest_phantom(np.random.default_rng(0), 16, frozenset())


def test_sample_findings_is_balanced() -> None:
    rng = np.random.default_rng(0)
    draws = [sample_findings(rng) for _ in range(2000)]
    for key in PHANTOM_FINDINGS:
        rate = np.mean([key in d for d in draws])
        assert 0.15 < rate < 0.5, (key, rate)


def test_the_same_phantom_at_any_resolution_looks_the_same() -> None:
    """Edges and noise per unit area keep their size, so the network input is size-free."""
    findings = frozenset({"nodule", "pneumothorax", "effusion"})
    small = chest_phantom(np.random.default_rng(3), 128, findings).image
    large = chest_phantom(np.random.default_rng(3), 512, findings).image

    def blocks(img: np.ndarray) -> np.ndarray:  # 32 x 32 block means
        n = img.shape[0] // 32
        return img.reshape(32, n, 32, n).mean(axis=(1, 3))

    assert np.abs(blocks(small) - blocks(large)).max() < 0.05
