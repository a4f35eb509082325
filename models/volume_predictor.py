"""Predictors of cross-sectional studies: slice-wise (head CT) and volumetric (brain MR, CTA).

Both start from :func:`models.volumes.assemble_volumes` (every frame of every instance, ordered
by position along the slice normal) and report the image-quality flags of each volume.

- ``SlicePredictor``: every present slice is one 2D input (resampled in-plane, then windowed,
  or sent through a bundle's transforms: ``Predictor._to_input``); the
  study's probability of a finding is its maximum over slices, and its heatmap and region are
  on the slice that gave it: a TID 1410 region on that exact instance and frame.
- ``VolumePredictor``: each volume is one 3D input on the network grid; a finding's region is
  an ellipsoid in the patient frame of reference (TID 1411, SCOORD3D) plus the source frame at
  its peak, and its heatmap is written on the network grid with its affine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from core.errors import ModelError, UndecodablePixels
from core.records import (
    HeatmapGrid,
    PlaneGeometry,
    QualityFlag,
    Region,
    VolumeGrid,
    VolumetricRegion,
)
from models.gradcam import region_of
from models.predictor import PlaneItem, Predictor, plane_location
from models.quality import volume_flags
from models.resampling import AxisMap, grid_maps, resample, resample_planes, to_unit_range
from models.volumes import FrameRef, Volume, assemble_volumes

__all__ = [
    "BrainTumourPredictor",
    "ChestCtaPredictor",
    "HeadCtPredictor",
    "SlicePredictor",
    "VolumeItem",
    "VolumePredictor",
]

logger = logging.getLogger(__name__)


def _volumes(datasets: list[Dataset]) -> list[Volume]:
    series = sorted({str(ds.get("SeriesInstanceUID", "?")) for ds in datasets})
    try:
        return assemble_volumes(datasets)
    except UndecodablePixels:
        raise  # names its instance already; the inference stage quarantines it
    except ModelError as exc:
        raise ModelError(f"Series {', '.join(series)}: {exc.reason}") from exc


class SlicePredictor(Predictor):
    """Slice-wise classification of a CT volume with study-level aggregation."""

    def _inputs(self, datasets: list[Dataset]) -> tuple[list[np.ndarray], list[Any], list[QualityFlag]]:
        inputs, items, flags = [], [], []
        spacing_mm = self.entry.input.spacing_mm
        for volume in _volumes(datasets):
            flags += volume_flags(volume)
            rows, cols = volume.array.shape[1:]
            maps = grid_maps((rows, cols), volume.spacing[1:], self._spatial_size, spacing_mm)
            present = [k for k, ref in enumerate(volume.frames) if ref is not None]  # missing: flagged, not invented
            inputs += self._slice_inputs(resample_planes(volume.array, maps)[present])
            items += [PlaneItem(volume.frames[k], rows, cols, maps, _plane_geometry(volume, k)) for k in present]  # type: ignore[arg-type]
        if not inputs:
            raise ModelError("Got no slices; expected at least one image")
        return inputs, items, flags

    def _slice_inputs(self, planes: np.ndarray) -> list[np.ndarray]:
        """The network inputs of resampled slices ``(n, H, W)``: a fixed window maps the whole
        stack at once; percentiles and bundle transforms go slice by slice."""
        if self._bundle_transforms is None and self.entry.input.window is not None:
            return list(to_unit_range(planes, self.entry.input.window)[:, None])
        return [self._to_input(plane) for plane in planes]

    def _localise(self, item: Any, heat: np.ndarray) -> tuple[Region, HeatmapGrid] | None:
        return plane_location(item, heat)


def _plane_geometry(volume: Volume, k: int) -> PlaneGeometry:
    """Position, orientation and spacing of slice ``k`` (for its Parametric Map frame)."""
    origin = volume.to_patient(np.array([k, 0.0, 0.0]))
    row_dir = volume.affine[:3, 2] / np.linalg.norm(volume.affine[:3, 2])
    col_dir = volume.affine[:3, 1] / np.linalg.norm(volume.affine[:3, 1])
    spacing = volume.spacing
    position = tuple(round(float(c), 6) for c in origin)
    orientation = tuple(round(float(c), 8) for c in (*row_dir, *col_dir))
    return PlaneGeometry(
        position=position,  # type: ignore[arg-type]
        orientation=orientation,  # type: ignore[arg-type]
        pixel_spacing=(float(spacing[1]), float(spacing[2])),
        slice_thickness=float(spacing[0]),
        frame_of_reference_uid=volume.frame_of_reference_uid,
    )


@dataclass(frozen=True, eq=False)
class VolumeItem:
    """A 3D network input.

    Attributes:
        volume: The source volume.
        maps: Network-to-source index maps of (slice, row, column).
    """

    volume: Volume
    maps: tuple[AxisMap, AxisMap, AxisMap]

    @property
    def ref(self) -> FrameRef:
        """The frame at the centre of the volume (the evidence when nothing is localised)."""
        return self.volume.nearest_frame(len(self.volume.frames) // 2)

    @property
    def affine(self) -> np.ndarray:
        """4x4 from network ``(slice, row, column)`` indices to patient coordinates."""
        scale = np.diag([m.scale for m in self.maps] + [1.0])
        scale[:3, 3] = [m.offset for m in self.maps]
        return np.asarray(self.volume.affine @ scale)


class VolumePredictor(Predictor):
    """Whole-volume classification; each series of the task is one input."""

    def _inputs(self, datasets: list[Dataset]) -> tuple[list[np.ndarray], list[Any], list[QualityFlag]]:
        inputs, items, flags = [], [], []
        for volume in _volumes(datasets):
            flags += volume_flags(volume)
            maps = grid_maps(volume.array.shape, volume.spacing, self._spatial_size, self.entry.input.spacing_mm)
            grid = resample(volume.array, maps)
            inputs.append(self._to_input(grid))
            items.append(VolumeItem(volume, maps))  # type: ignore[arg-type]
        return inputs, items, flags

    def _localise(self, item: Any, heat: np.ndarray) -> tuple[Region, HeatmapGrid] | None:
        region = region_of(heat)
        if region is None:
            return None
        affine = item.affine
        low, high = np.array(region.low) - 0.5, np.array(region.high) + 0.5
        centre, half = (low + high) / 2, (high - low) / 2

        def to_mm(index: np.ndarray) -> np.ndarray:
            return np.asarray(affine[:3, :3] @ index + affine[:3, 3])

        axes = []
        for a in range(3):
            step = np.zeros(3)
            step[a] = half[a]
            ends = [to_mm(centre - step), to_mm(centre + step)]
            axes.append((float(np.linalg.norm(ends[1] - ends[0])), ends))
        axes.sort(key=lambda pair: -pair[0])
        peak_mm = to_mm(np.array(region.peak, dtype=np.float64))
        source_slice = int(np.clip(np.rint(item.volume.to_indices(peak_mm)[0]), 0, len(item.volume.frames) - 1))
        frame = item.volume.nearest_frame(source_slice)
        located = VolumetricRegion(
            frame,
            item.volume.frame_of_reference_uid,
            tuple(tuple(round(float(c), 3) for c in p) for _, ends in axes for p in ends),  # type: ignore[misc]
            tuple(round(float(c), 3) for c in peak_mm),  # type: ignore[arg-type]
        )
        grid = VolumeGrid(
            tuple(tuple(float(v) for v in row) for row in affine.round(8)),  # type: ignore[arg-type]
            item.volume.frame_of_reference_uid,
        )
        return located, grid


class HeadCtPredictor(SlicePredictor):
    """Head CT: any intracranial haemorrhage and six subtypes, slice by slice."""

    default_family = "head_ct_haemorrhage"


class BrainTumourPredictor(VolumePredictor):
    """Brain MR: tumour present, and where (an ellipsoid in the frame of reference)."""

    default_family = "brain_mri_tumour"


class ChestCtaPredictor(VolumePredictor):
    """Chest CT angiography: aortic dissection (critical), and where."""

    default_family = "chest_cta"
