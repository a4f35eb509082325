"""Whole synthetic studies per model family: phantom, DICOM and ground truth in one call.

Used by the demo training's held-out evaluation, the tests, the demo and the benchmarks. Each
study knows its findings and its lesion mask in source index space (``(rows, columns)`` for a
radiograph, ``(slices, rows, columns)`` for a volume, slice ``k`` being the instance built from
``values[k]``), so that a test can check where the model points.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import FileDataset

from synthetic.aorta_phantoms import chest_cta_volume
from synthetic.brain_phantoms import brain_volume
from synthetic.head_phantoms import Bleed, head_volume, sample_bleed
from synthetic.limb_phantoms import limb_phantom
from synthetic.synthetic_series import make_radiograph_study, make_volume_series

__all__ = [
    "SyntheticStudy",
    "brain_mr_study",
    "chest_cta_study",
    "fracture_study",
    "head_ct_study",
]

logger = logging.getLogger(__name__)

BRAIN_SHAPE, BRAIN_SPACING = (32, 64, 64), (5.0, 3.4, 3.4)
CTA_SHAPE, CTA_SPACING = (40, 80, 80), (5.0, 3.1, 3.1)
HEAD_SPACING = 5.0
"""Default geometries (mm) of the synthetic volumes."""


@dataclass(frozen=True, eq=False)
class SyntheticStudy:
    """DICOM instances with their truth.

    Attributes:
        datasets: The instances (in slice order for volumes).
        findings: What the phantom shows.
        lesion_mask: bool, in source index space.
        values: The phantom's pixel values (HU, MR units or [0, 1]).
    """

    datasets: list[FileDataset]
    findings: frozenset[str]
    lesion_mask: np.ndarray
    values: np.ndarray = field(repr=False)

    @property
    def study_uid(self) -> str:
        """Study Instance UID."""
        return str(self.datasets[0].StudyInstanceUID)


def _ids(seed: int, kind: str, ids: Mapping[str, str]) -> dict[str, str]:
    return {
        "patient_id": ids.get("patient_id", f"{kind}{seed}"),
        "accession": ids.get("accession", f"A{kind}{seed}"),
        **({"study_uid": ids["study_uid"]} if "study_uid" in ids else {}),
    }


def fracture_study(seed: int, fracture: bool, size: int = 256, **ids: str) -> SyntheticStudy:
    """One AP forearm radiograph (DX), fractured or not."""
    rng = np.random.default_rng(seed)
    phantom = limb_phantom(rng, size, fracture)
    datasets = make_radiograph_study(
        [phantom.image],
        seed=seed,
        body_part="FOREARM",
        region=("14975008", "Forearm"),
        comments="Fracture." if fracture else "No fracture.",
        **_ids(seed, "FX", ids),
    )
    return SyntheticStudy(datasets, phantom.findings, phantom.lesion_mask, phantom.image)


def head_ct_study(
    seed: int,
    bleeds: Mapping[int, Sequence[str | Bleed]] | None = None,
    n_slices: int = 24,
    size: int = 64,
    **ids: str,
) -> SyntheticStudy:
    """A non-contrast head CT; ``bleeds[k]`` are drawn on slice ``k`` (the same bleed on
    every slice that names its kind, so a bleed spans contiguous slices coherently)."""
    rng = np.random.default_rng(seed)
    kinds: dict[str, Bleed] = {}
    by_slice: dict[int, list[Bleed]] = {}
    for k, wanted in (bleeds or {}).items():
        for b in wanted:
            bleed = b if isinstance(b, Bleed) else kinds.setdefault(b, sample_bleed(rng, b))
            by_slice.setdefault(k, []).append(bleed)
    slices = head_volume(rng, n_slices, size, by_slice)
    values = np.stack([s.hu for s in slices])
    datasets = make_volume_series(
        values,
        modality="CT",
        spacing=(HEAD_SPACING, 220.0 / size, 220.0 / size),
        seed=seed,
        body_part="HEAD",
        series_description="CT HEAD WITHOUT CONTRAST",
        **_ids(seed, "H", ids),
    )
    findings = frozenset().union(*(s.findings for s in slices))
    return SyntheticStudy(datasets, findings, np.stack([s.lesion_mask for s in slices]), values)


def brain_mr_study(
    seed: int,
    tumour: bool,
    shape: tuple[int, int, int] = BRAIN_SHAPE,
    spacing: tuple[float, float, float] = BRAIN_SPACING,
    **ids: str,
) -> SyntheticStudy:
    """A post-contrast T1 brain MR, with or without a tumour."""
    phantom = brain_volume(np.random.default_rng(seed), shape, spacing, tumour)
    datasets = make_volume_series(
        phantom.values,
        modality="MR",
        spacing=spacing,
        seed=seed,
        body_part="BRAIN",
        series_description="MR BRAIN T1 POST CONTRAST",
        **_ids(seed, "B", ids),
    )
    return SyntheticStudy(datasets, phantom.findings, phantom.lesion_mask, phantom.values)


def chest_cta_study(
    seed: int,
    dissection: bool,
    shape: tuple[int, int, int] = CTA_SHAPE,
    spacing: tuple[float, float, float] = CTA_SPACING,
    **ids: str,
) -> SyntheticStudy:
    """A chest CT angiogram, with or without an aortic dissection."""
    phantom = chest_cta_volume(np.random.default_rng(seed), shape, spacing, dissection)
    datasets = make_volume_series(
        phantom.hu,
        modality="CT",
        spacing=spacing,
        seed=seed,
        body_part="CHEST",
        series_description="CTA CHEST AORTA",
        **_ids(seed, "C", ids),
    )
    return SyntheticStudy(datasets, phantom.findings, phantom.lesion_mask, phantom.hu)
