"""DICOM instances to volumes: every frame of every instance, ordered along the slice normal.

A volume is built from all frames of a series, whether they arrive as single-frame instances
(CT Image, MR Image) or as multi-frame instances (Enhanced / Legacy Converted Enhanced CT and
MR, with per-frame functional groups, PS3.3 C.7.6.16). The order comes from geometry only:
each frame's Image Position (Patient) is projected on the slice normal by highdicom's
``get_volume_positions`` (the same convention as ``highdicom.Volume``), never from Instance
Number, frame number or the order of arrival. No frame is dropped and none is reordered by
anything but its position.

Pixel values go through the Modality LUT of their own frame (Rescale Slope / Intercept at the
top level, or the Pixel Value Transformation functional group of an enhanced frame), and
MONOCHROME1 is negated, so that values are modality units (HU for CT) with bright = dense.

Slices missing from an otherwise regular stack (a gap that is a whole multiple of the slice
spacing) are filled with the nearest present slice and reported in ``Volume.missing``, so that
the quality check can flag an incomplete series; every present slice keeps its ``FrameRef``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

import core.pixels
from core.errors import ModelError, RejectedInput, UndecodablePixels
from core.records import FrameRef

__all__ = ["FrameRef", "Plane", "Volume", "assemble_volumes", "planes_of"]

# FrameRef is the pipeline's one frame reference (core.records), re-exported here.

logger = logging.getLogger(__name__)

_POSITION_TOLERANCE_MM = 0.05
"""How far a frame may sit from where the volume's affine puts it (a convention check)."""


@dataclass(frozen=True, eq=False)
class Plane:
    """One decoded frame with its geometry.

    Attributes:
        ref: Where it came from.
        pixels: float32 ``(rows, columns)`` modality values, bright = dense.
        position: Image Position (Patient) of its first pixel, mm; None for projection images.
        orientation: Image Orientation (Patient) (row then column direction cosines) or None.
        pixel_spacing: (row spacing, column spacing) in mm, or None if unknown.
        frame_of_reference_uid: Frame of Reference UID, or "" for projection images.
        series_instance_uid: Series Instance UID.
    """

    ref: FrameRef
    pixels: np.ndarray
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    frame_of_reference_uid: str
    series_instance_uid: str


@dataclass(frozen=True, eq=False)
class Volume:
    """A regular stack of planes in the patient coordinate system.

    Attributes:
        array: float32 ``(slices, rows, columns)`` modality values.
        affine: 4x4 matrix from ``(slice, row, column)`` indices to patient coordinates (mm),
            highdicom's convention (``highdicom.Volume.affine``).
        frames: Per slice, its source frame; None where a slice was missing and filled.
        frame_of_reference_uid: Frame of Reference UID.
        series_instance_uid: Series Instance UID.
    """

    array: np.ndarray
    affine: np.ndarray
    frames: tuple[FrameRef | None, ...]
    frame_of_reference_uid: str
    series_instance_uid: str

    @property
    def missing(self) -> tuple[int, ...]:
        """Indices of slices that were missing from the series (filled from a neighbour)."""
        return tuple(i for i, f in enumerate(self.frames) if f is None)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing along (slice, row, column), mm."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    def nearest_frame(self, index: int) -> FrameRef:
        """Return the source frame of slice ``index``, or of the nearest present slice."""
        order = sorted(range(len(self.frames)), key=lambda i: (abs(i - index), i))
        return next(f for i in order if (f := self.frames[i]) is not None)

    def to_patient(self, indices: np.ndarray) -> np.ndarray:
        """Map ``(..., 3)`` continuous ``(slice, row, column)`` indices to patient mm."""
        points = np.asarray(indices, dtype=np.float64)
        return points @ self.affine[:3, :3].T + self.affine[:3, 3]

    def to_indices(self, points: np.ndarray) -> np.ndarray:
        """Map ``(..., 3)`` patient coordinates (mm) to continuous volume indices."""
        inverse = np.linalg.inv(self.affine)
        return np.asarray(points, dtype=np.float64) @ inverse[:3, :3].T + inverse[:3, 3]


def _functional_item(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """The item of a functional group for frame ``index``: per-frame first, then shared."""
    for holder in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(holder)
        if not groups:
            continue
        group = groups[index] if holder.startswith("PerFrame") else groups[0]
        items = group.get(sequence)
        if items:
            return items[0]  # type: ignore[no-any-return]
    return None


def _frame_geometry(ds: Dataset, index: int, multiframe: bool) -> tuple[Any, Any, Any]:
    """Return (position, orientation, pixel spacing) of frame ``index``, or Nones."""
    if multiframe:
        pos_item = _functional_item(ds, index, "PlanePositionSequence")
        ori_item = _functional_item(ds, index, "PlaneOrientationSequence")
        spacing_item = _functional_item(ds, index, "PixelMeasuresSequence")
        position = pos_item.get("ImagePositionPatient") if pos_item is not None else None
        orientation = ori_item.get("ImageOrientationPatient") if ori_item is not None else None
        spacing = spacing_item.get("PixelSpacing") if spacing_item is not None else None
    else:
        position, orientation = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    return _floats(position), _floats(orientation), _floats(spacing)


def _floats(value: Any) -> tuple[float, ...] | None:
    """A multi-valued DICOM number as floats (``None`` when absent or empty)."""
    return tuple(float(x) for x in value) if value else None


def _rescale(ds: Dataset, index: int, multiframe: bool) -> tuple[float, float]:
    """Rescale (slope, intercept) of one frame (PS3.3 C.11.1, C.7.6.16.2.9)."""
    item = _functional_item(ds, index, "PixelValueTransformationSequence") if multiframe else None
    source = item if item is not None else ds
    slope = source.get("RescaleSlope", 1.0)
    intercept = source.get("RescaleIntercept", 0.0)
    return float(slope if slope not in (None, "") else 1.0), float(intercept or 0.0)


def _decoded(ds: Dataset) -> np.ndarray:
    """All frames as ``(frames, rows, columns)`` stored values, decoded by ``core.pixels``.

    The validator accepted the instance with the same function and plugin order; pydicom's own
    default order could pick another plugin (GDCM, Pillow) that the validator never tried.
    """
    uid = str(ds.get("SOPInstanceUID", "?"))
    try:
        stored = core.pixels.decode_frames(ds)
    except RejectedInput as exc:
        raise UndecodablePixels(f"Cannot decode Pixel Data of SOP Instance {uid}: {exc.reason}", uid) from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if stored.ndim != 3 or stored.shape[0] != frames:
        raise ModelError(
            f"SOP Instance {ds.get('SOPInstanceUID', '?')}: decoded pixels of shape "
            f"{stored.shape}; expected {frames} grayscale frames"
        )
    return stored


def planes_of(ds: Dataset) -> list[Plane]:
    """Decode every frame of one instance, each with its own geometry and Modality LUT.

    Args:
        ds: A grayscale image instance (single- or multi-frame) with Pixel Data.

    Returns:
        One ``Plane`` per frame, in frame-number order.

    Raises:
        ModelError: If the instance is not single-sample grayscale or cannot be decoded.
    """
    photometric = str(ds.get("PhotometricInterpretation", ""))
    samples = ds.get("SamplesPerPixel", 1)
    if "PixelData" not in ds or samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ModelError(
            f"SOP Instance {ds.get('SOPInstanceUID', '?')}: got SamplesPerPixel (0028,0002) = "
            f"{samples}, PhotometricInterpretation (0028,0004) = {photometric!r}, Pixel Data "
            f"{'present' if 'PixelData' in ds else 'absent'}; expected grayscale pixels "
            "(1 sample, MONOCHROME1 or MONOCHROME2)"
        )
    stored = _decoded(ds)
    multiframe = "NumberOfFrames" in ds and ("PerFrameFunctionalGroupsSequence" in ds or int(ds.NumberOfFrames) > 1)
    sign = -1.0 if photometric == "MONOCHROME1" else 1.0
    planes = []
    for index in range(stored.shape[0]):
        position, orientation, spacing = _frame_geometry(ds, index, multiframe)
        slope, intercept = _rescale(ds, index, multiframe)
        if multiframe or "ModalityLUTSequence" not in ds:
            values = stored[index].astype(np.float32) * np.float32(slope) + np.float32(intercept)
        else:  # a single frame with a Modality LUT Sequence: pydicom applies it
            from pydicom.pixels import apply_modality_lut

            values = np.asarray(apply_modality_lut(stored[index], ds), dtype=np.float32)
        ref = FrameRef(str(ds.SOPInstanceUID), str(ds.SOPClassUID), index + 1 if multiframe else None)
        planes.append(
            Plane(
                ref=ref,
                pixels=values if sign > 0 else -values,
                position=position,  # type: ignore[arg-type]
                orientation=orientation,
                pixel_spacing=spacing,  # type: ignore[arg-type]
                frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or ""),
                series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
            )
        )
    return planes


def assemble_volumes(datasets: Sequence[Dataset]) -> list[Volume]:
    """Build one volume per series (and frame of reference) from every frame of ``datasets``.

    Args:
        datasets: Image instances in any order; single- and multi-frame may be mixed.

    Returns:
        The volumes, ordered by Series Instance UID.

    Raises:
        ModelError: If a frame lacks geometry, frames of a series disagree in size, orientation
            or spacing, or their positions are not a regular stack along the slice normal.
    """
    groups: dict[tuple[str, str], list[Plane]] = {}
    for ds in datasets:
        for plane in planes_of(ds):
            key = (plane.series_instance_uid, plane.frame_of_reference_uid)
            groups.setdefault(key, []).append(plane)
    return [_stack(planes) for _, planes in sorted(groups.items())]


def _check_consistent(planes: Sequence[Plane]) -> None:
    first = planes[0]
    series = first.series_instance_uid
    for plane in planes:
        if plane.position is None or plane.orientation is None or plane.pixel_spacing is None:
            raise ModelError(
                f"Series {series}: frame {plane.ref.sop_instance_uid} "
                f"#{plane.ref.frame_number or 1} has no Image Position / Orientation (Patient) "
                "or Pixel Spacing; expected a cross-sectional image with geometry"
            )
        if plane.pixels.shape != first.pixels.shape:
            raise ModelError(
                f"Series {series}: frames of {plane.pixels.shape} and {first.pixels.shape} "
                "pixels; expected one size for every frame of a volume"
            )
        if not np.allclose(plane.orientation, first.orientation, atol=1e-4) or not np.allclose(
            plane.pixel_spacing, first.pixel_spacing, rtol=1e-4
        ):
            raise ModelError(
                f"Series {series}: orientation {plane.orientation} / spacing "
                f"{plane.pixel_spacing} differ from {first.orientation} / {first.pixel_spacing}; "
                "expected one orientation and pixel spacing per volume"
            )


def _stack(planes: Sequence[Plane]) -> Volume:
    """Order the planes of one series by position along the slice normal; fill gaps."""
    _check_consistent(planes)
    first = planes[0]
    spacing, indices = hd.spatial.get_volume_positions(
        [p.position for p in planes],
        first.orientation,
        allow_missing_positions=True,
    )
    if spacing is None or indices is None:
        raise ModelError(
            f"Series {first.series_instance_uid}: the {len(planes)} frames are not a regular "
            "stack along the slice normal (duplicate positions, uneven gaps or a tilted stack); "
            "expected equally spaced parallel slices"
        )
    depth = max(indices) + 1
    by_index = {index: plane for index, plane in zip(indices, planes, strict=True)}
    present = sorted(by_index)
    array = np.empty((depth, *first.pixels.shape), dtype=np.float32)
    frames: list[FrameRef | None] = []
    for k in range(depth):
        nearest = by_index.get(k) or by_index[min(present, key=lambda i: (abs(i - k), i))]
        array[k] = nearest.pixels
        frames.append(by_index[k].ref if k in by_index else None)
    origin = by_index[0]
    geometry = hd.Volume.from_attributes(
        array=np.zeros((1, 1, 1), dtype=np.float32),
        image_position=origin.position,  # type: ignore[arg-type]
        image_orientation=first.orientation,  # type: ignore[arg-type]
        pixel_spacing=first.pixel_spacing,  # type: ignore[arg-type]
        spacing_between_slices=float(spacing),
        frame_of_reference_uid=first.frame_of_reference_uid or None,
        coordinate_system="PATIENT",
    )
    volume = Volume(
        array,
        np.array(geometry.affine),
        tuple(frames),
        first.frame_of_reference_uid,
        first.series_instance_uid,
    )
    _check_positions(volume, by_index)
    if volume.missing:
        logger.info("Series %s: %d slice(s) missing", first.series_instance_uid, len(volume.missing))
    return volume


def _check_positions(volume: Volume, by_index: dict[int, Plane]) -> None:
    """Every present slice must sit where the affine puts it (guards the index convention)."""
    for k, plane in by_index.items():
        expected = volume.to_patient(np.array([k, 0.0, 0.0]))
        if np.linalg.norm(expected - np.asarray(plane.position)) > _POSITION_TOLERANCE_MM:
            raise ModelError(
                f"Series {volume.series_instance_uid}: slice {k} is at {plane.position}; the "
                f"volume geometry puts it at {tuple(expected.round(3))}"
            )
