"""Grad-CAM heatmaps as DICOM Parametric Maps (PS3.3 A.75), built in memory with highdicom.

A model returns each heatmap at network resolution (``core.records.Heatmap``: 16-bit levels,
zlib), with the grid it lies on; the inference stage stores the levels as a blob and the
prediction keeps a ``HeatmapRef``. Placing it on the source:

- ``PlaneGrid``: a map of one source frame, with the network-to-source index mapping of rows and
  columns. It is resampled onto the frame's own pixel grid, so the PM frame and the source
  frame coincide pixel for pixel. Cross-sectional frames carry their plane geometry (position,
  orientation, spacing, frame of reference); projection radiographs have none, so the PM gets a
  frame of reference of its own on the source's pixel grid (see ``_projection_geometry``).
- ``VolumeGrid``: a 3D map on the network grid with its affine in the patient coordinate system;
  the PM is written on that grid (``highdicom.Volume``), in the source's frame of reference.

The map's value is class activation (DCM 130059 "Class activation", no units, 0-1; see
``standards.md`` 1.6). UIDs are deterministic like the SR's, so a re-sent PM is a duplicate.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from core.records import HeatmapRef, PlaneGeometry, PlaneGrid, Prediction, VolumeGrid
from core.sr import SRIdentity, stamp_times
from core.uids import output_uid, uid_from_parts

__all__ = ["ParametricMapBuilder", "decode_levels", "encode_levels", "plane_on_source"]

_LEVELS = 65535


def encode_levels(heat: np.ndarray) -> bytes:
    """A [0, 1] map as 16-bit little-endian levels, zlib-compressed (what a blob holds).

    >>> decode_levels(encode_levels(np.array([[0.0, 1.0]])), (1, 2))[0, 1]
    1.0
    """
    levels = np.rint(np.clip(heat, 0.0, 1.0) * _LEVELS).astype("<u2")
    return zlib.compress(levels.tobytes(), 6)


def decode_levels(data: bytes, shape: Sequence[int]) -> np.ndarray:
    """Invert :func:`encode_levels`: float32 values in [0, 1].

    Raises:
        ValueError: If the data does not match the shape.
    """
    raw = zlib.decompress(data)
    dims = tuple(int(n) for n in shape)
    if len(raw) != 2 * int(np.prod(dims)):
        raise ValueError(f"Heatmap holds {len(raw)} bytes; expected 2 x {dims}")
    return (np.frombuffer(raw, dtype="<u2").reshape(dims) / _LEVELS).astype(np.float32)


def _onto_grid(heat: np.ndarray, size: int, scale: float, offset: float, axis: int) -> np.ndarray:
    """Linear resampling of one axis: source index ``j`` reads map index ``(j - offset) / scale``."""
    where = (np.arange(size) - offset) / scale
    grid = np.arange(heat.shape[axis])
    moved = np.moveaxis(heat, axis, -1)
    out = np.apply_along_axis(lambda line: np.interp(where, grid, line), -1, moved)
    return np.moveaxis(out, -1, axis)


def plane_on_source(grid: PlaneGrid, heat: np.ndarray) -> np.ndarray:
    """A plane heatmap resampled onto its source frame's ``(rows, columns)`` grid."""
    heat = _onto_grid(heat, grid.rows, grid.row_map.scale, grid.row_map.offset, 0)
    return _onto_grid(heat, grid.columns, grid.column_map.scale, grid.column_map.offset, 1).astype(np.float32)


_DIRECTIONS = {
    "L": (1.0, 0.0, 0.0),
    "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0),
    "A": (0.0, -1.0, 0.0),
    "H": (0.0, 0.0, 1.0),
    "F": (0.0, 0.0, -1.0),
}
"""Patient Orientation (0020,0020) letters as LPS unit vectors (PS3.3 C.7.6.1.1.1)."""


def _projection_geometry(source: Dataset) -> PlaneGeometry:
    """A plane for a projection radiograph, which has no frame of reference.

    The Parametric Map IOD requires one (PS3.3 A.75: Frame of Reference and Plane Position /
    Orientation are mandatory), so the map gets its own, derived from the source instance, with
    the source's pixel grid as its plane: origin 0, directions from Patient Orientation (rows
    then columns; identity if absent or oblique), spacing from (Imager) Pixel Spacing. The map
    stays pixel-for-pixel on the source (Derivation Image Sequence, Spatial Locations Preserved).
    """
    letters = [str(v) for v in (source.get("PatientOrientation") or [])]
    if len(letters) == 2 and all(v in _DIRECTIONS for v in letters):
        orientation = (*_DIRECTIONS[letters[0]], *_DIRECTIONS[letters[1]])
    else:
        orientation = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing") or [1.0, 1.0]
    return PlaneGeometry(
        position=(0.0, 0.0, 0.0),
        orientation=orientation,  # type: ignore[arg-type]
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        slice_thickness=1.0,
        frame_of_reference_uid=uid_from_parts("pm-frame-of-reference", str(source.SOPInstanceUID)),
    )


def _plane(grid: PlaneGrid, heat: np.ndarray, source: Dataset) -> tuple[list[Dataset], Any]:
    """The source to reference and the map as a one-slice ``highdicom.Volume`` on its frame."""
    geometry = grid.plane
    if geometry is None:
        geometry = _projection_geometry(source)
        source = copy.deepcopy(source)
        source.FrameOfReferenceUID = geometry.frame_of_reference_uid
        source.PositionReferenceIndicator = ""
        source.ImagePositionPatient = list(geometry.position)
        source.ImageOrientationPatient = list(geometry.orientation)
        source.PixelSpacing = list(geometry.pixel_spacing)
        source.SliceThickness = geometry.slice_thickness
    volume = hd.Volume.from_attributes(
        array=plane_on_source(grid, heat)[None],
        image_position=list(geometry.position),
        image_orientation=list(geometry.orientation),
        pixel_spacing=list(geometry.pixel_spacing),
        spacing_between_slices=float(geometry.slice_thickness),
        frame_of_reference_uid=geometry.frame_of_reference_uid,
        coordinate_system="PATIENT",
    )
    return [source], volume


def _fix_dimension_organization(pm: Dataset) -> None:
    """Derive the Dimension Organization UID from the PM's own UID (highdicom draws a random
    one), so the same input gives a byte-identical PM."""
    uid = uid_from_parts("pm-dimension-organization", str(pm.SOPInstanceUID))
    for item in pm.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = uid
    for item in pm.get("DimensionIndexSequence", []):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = uid


class ParametricMapBuilder:
    """Builds the Parametric Map of one finding's heatmap.

    Args:
        identity: Equipment identity; PMs go in series ``identity.series_number + 1``.
    """

    def __init__(self, identity: SRIdentity) -> None:
        self._identity = identity

    @staticmethod
    def pm_uids(study_uid: str, prediction: Prediction, key: str) -> tuple[str, str]:
        """Return the deterministic ``(SeriesInstanceUID, SOPInstanceUID)`` of a finding's PM."""
        name, version = prediction.model_name, prediction.model_version
        series = output_uid(study_uid, name, version, (), "pm-s")
        sop = output_uid(study_uid, name, version, prediction.source_uids, f"pm:{key}")
        return series, sop

    def build(
        self,
        sources: Sequence[Dataset],
        prediction: Prediction,
        heatmap: HeatmapRef,
        heat: np.ndarray,
        created_at: datetime | None = None,
    ) -> hd.pm.ParametricMap:
        """Build the PM of one finding's heatmap.

        Args:
            sources: Headers of the instances the prediction used (all of one study).
            prediction: The model's result.
            heatmap: The stored heatmap (its grid).
            heat: Its values (``decode_levels`` of the blob).
            created_at: Content and creation date/time (the job's time: byte-identical PMs
                for the same input); ``None`` keeps highdicom's wall clock.

        Returns:
            The Parametric Map.

        Raises:
            ValueError: The heatmap's source instances are not among ``sources``.
        """
        key = heatmap.finding
        grid = heatmap.grid
        if isinstance(grid, VolumeGrid):
            refs = [s for s in sources if str(s.get("FrameOfReferenceUID", "")) == grid.frame_of_reference_uid]
            pixels: Any = hd.Volume(
                array=heat,
                affine=np.asarray(grid.affine, dtype=np.float64),
                frame_of_reference_uid=grid.frame_of_reference_uid,
                coordinate_system="PATIENT",
            )
        else:
            source = {str(s.SOPInstanceUID): s for s in sources}.get(grid.frame.sop_instance_uid)
            refs, pixels = ([], None) if source is None else _plane(grid, heat, source)
        if not refs or pixels is None:
            raise ValueError(f"Heatmap of {key!r} refers to instances not in the {len(sources)} sources")
        pm = self._pm(refs, pixels, prediction, key)
        # General Series Laterality is Type 2C (paired body parts): the source's side, else
        # present and empty (dicom3tools cannot decide the condition and wants it present).
        laterality = str(refs[0].get("Laterality") or refs[0].get("ImageLaterality") or "")
        pm.Laterality = laterality if laterality in ("L", "R") else ""
        _fix_dimension_organization(pm)
        if created_at is not None:
            stamp_times(pm, created_at)
        return pm

    def _pm(self, refs: list[Dataset], pixels: Any, prediction: Prediction, key: str) -> hd.pm.ParametricMap:
        series_uid, sop_uid = self.pm_uids(str(refs[0].StudyInstanceUID), prediction, key)
        label = "DEMO " if prediction.demo else ""
        return hd.pm.ParametricMap(
            source_images=refs,
            pixel_array=pixels,
            series_instance_uid=series_uid,
            series_number=self._identity.series_number + 1,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer=self._identity.manufacturer,
            manufacturer_model_name=prediction.model_name[:64],
            software_versions=prediction.model_version[:64],
            device_serial_number=prediction.model_version[:64],
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[
                hd.pm.RealWorldValueMapping(
                    lut_label="GRADCAM",
                    lut_explanation=f"Grad-CAM {key}"[:64],
                    value_range=(0.0, 1.0),
                    quantity_definition=codes.DCM.ClassActivation,
                    unit=codes.UCUM.NoUnits,
                )
            ],
            voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
            content_label="GRADCAM",
            content_description=f"Grad-CAM {key}"[:64],
            series_description=f"AI heatmaps {label}{prediction.model_name}"[:64],
        )
