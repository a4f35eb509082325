"""Grad-CAM heatmaps as DICOM Parametric Maps (PS3.3 A.75), built in memory with highdicom.

A model returns each heatmap at network resolution in ``Prediction.extra["heatmaps"][key]``
(compact: 16-bit, zlib, base64), with what is needed to place it on the source:

- ``"plane"``: a map of one source frame, with the network-to-source index mapping of rows and
  columns. It is resampled onto the frame's own pixel grid, so the PM frame and the source
  frame coincide pixel for pixel. Cross-sectional frames carry their plane geometry (position,
  orientation, spacing, frame of reference); projection radiographs have none, so the PM gets a
  frame of reference of its own on the source's pixel grid (see ``_projection_geometry``).
- ``"volume"``: a 3D map on the network grid with its affine in the patient coordinate system;
  the PM is written on that grid (``highdicom.Volume``), in the source's frame of reference.

The map's value is class activation (DCM 130059 "Class activation", no units, 0-1; see
``standards.md`` 1.6). UIDs are deterministic like the SR's, so a re-sent PM is a duplicate.
"""

from __future__ import annotations

import base64
import copy
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from core.sr import SRIdentity
from core.types import Prediction
from core.uids import output_uid, uid_from_parts

__all__ = ["ParametricMapBuilder", "decode_heatmap", "encode_heatmap", "plane_on_source"]

_LEVELS = 65535


def encode_heatmap(heat: np.ndarray) -> dict[str, Any]:
    """Return a JSON-safe encoding of a [0, 1] map (16-bit levels, zlib, base64).

    >>> decode_heatmap(encode_heatmap(np.array([[0.0, 1.0]])))[0, 1]
    1.0
    """
    levels = np.rint(np.clip(heat, 0.0, 1.0) * _LEVELS).astype("<u2")
    packed = base64.b64encode(zlib.compress(levels.tobytes(), 6)).decode("ascii")
    return {"shape": list(levels.shape), "data": packed}


def decode_heatmap(payload: Mapping[str, Any]) -> np.ndarray:
    """Invert :func:`encode_heatmap`: float32 values in [0, 1].

    Raises:
        ValueError: If the payload's data does not match its shape.
    """
    raw = zlib.decompress(base64.b64decode(payload["data"]))
    shape = tuple(int(n) for n in payload["shape"])
    if len(raw) != 2 * int(np.prod(shape)):
        raise ValueError(f"Heatmap holds {len(raw)} bytes; expected 2 x {shape}")
    return (np.frombuffer(raw, dtype="<u2").reshape(shape) / _LEVELS).astype(np.float32)


def _onto_grid(heat: np.ndarray, size: int, scale: float, offset: float, axis: int) -> np.ndarray:
    """Linear resampling of one axis: source index ``j`` reads map index ``(j - offset) / scale``."""
    where = (np.arange(size) - offset) / scale
    grid = np.arange(heat.shape[axis])
    moved = np.moveaxis(heat, axis, -1)
    out = np.apply_along_axis(lambda line: np.interp(where, grid, line), -1, moved)
    return np.moveaxis(out, -1, axis)


def plane_on_source(payload: Mapping[str, Any]) -> np.ndarray:
    """The map of a ``"plane"`` payload on its source frame's ``(rows, columns)`` grid."""
    heat = decode_heatmap(payload)
    (rs, ro), (cs, co) = payload["row_map"], payload["column_map"]
    heat = _onto_grid(heat, int(payload["rows"]), float(rs), float(ro), 0)
    return _onto_grid(heat, int(payload["columns"]), float(cs), float(co), 1).astype(np.float32)


_DIRECTIONS = {
    "L": (1.0, 0.0, 0.0), "R": (-1.0, 0.0, 0.0), "P": (0.0, 1.0, 0.0), "A": (0.0, -1.0, 0.0),
    "H": (0.0, 0.0, 1.0), "F": (0.0, 0.0, -1.0),
}
"""Patient Orientation (0020,0020) letters as LPS unit vectors (PS3.3 C.7.6.1.1.1)."""


def _projection_geometry(source: Dataset) -> dict[str, Any]:
    """A plane for a projection radiograph, which has no frame of reference.

    The Parametric Map IOD requires one (PS3.3 A.75: Frame of Reference and Plane Position /
    Orientation are mandatory), so the map gets its own, derived from the source instance, with
    the source's pixel grid as its plane: origin 0, directions from Patient Orientation (rows
    then columns; identity if absent or oblique), spacing from (Imager) Pixel Spacing. The map
    stays pixel-for-pixel on the source (Derivation Image Sequence, Spatial Locations Preserved).
    """
    letters = [str(v) for v in (source.get("PatientOrientation") or [])]
    if len(letters) == 2 and all(v in _DIRECTIONS for v in letters):
        orientation = [*_DIRECTIONS[letters[0]], *_DIRECTIONS[letters[1]]]
    else:
        orientation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing") or [1.0, 1.0]
    return {
        "position": [0.0, 0.0, 0.0],
        "orientation": orientation,
        "pixel_spacing": [float(v) for v in spacing],
        "slice_thickness": 1.0,
        "frame_of_reference_uid": uid_from_parts("pm-frame-of-reference", str(source.SOPInstanceUID)),
    }


def _plane(payload: Mapping[str, Any], source: Dataset) -> tuple[list[Dataset], Any]:
    """The source to reference and the map as a one-slice ``highdicom.Volume`` on its frame."""
    geometry = payload.get("geometry")
    if geometry is None:
        geometry = _projection_geometry(source)
        source = copy.deepcopy(source)
        source.FrameOfReferenceUID = geometry["frame_of_reference_uid"]
        source.PositionReferenceIndicator = ""
        source.ImagePositionPatient = geometry["position"]
        source.ImageOrientationPatient = geometry["orientation"]
        source.PixelSpacing = geometry["pixel_spacing"]
        source.SliceThickness = geometry["slice_thickness"]
    volume = hd.Volume.from_attributes(
        array=plane_on_source(payload)[None],
        image_position=geometry["position"],
        image_orientation=geometry["orientation"],
        pixel_spacing=geometry["pixel_spacing"],
        spacing_between_slices=float(geometry["slice_thickness"]),
        frame_of_reference_uid=geometry["frame_of_reference_uid"],
        coordinate_system="PATIENT",
    )
    return [source], volume


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

    def build(self, sources: Sequence[Dataset], prediction: Prediction, key: str) -> hd.pm.ParametricMap:
        """Build the PM of ``prediction``'s heatmap for finding ``key``.

        Args:
            sources: Headers of the instances the prediction used (all of one study).
            prediction: The model's result, with ``extra["heatmaps"][key]``.
            key: The finding.

        Returns:
            The Parametric Map.

        Raises:
            ValueError: The prediction has no heatmap for ``key``, or its source instances are
                not among ``sources``.
        """
        payload = prediction.extra.get("heatmaps", {}).get(key)
        if payload is None:
            raise ValueError(f"Prediction of {prediction.family} has no heatmap for {key!r}")
        by_uid = {str(s.SOPInstanceUID): s for s in sources}
        if payload["kind"] == "volume":
            refs = [s for s in sources if str(s.get("FrameOfReferenceUID", "")) ==
                    payload["frame_of_reference_uid"]]
            pixels: Any = hd.Volume(
                array=decode_heatmap(payload),
                affine=np.asarray(payload["affine"], dtype=np.float64),
                frame_of_reference_uid=payload["frame_of_reference_uid"],
                coordinate_system="PATIENT",
            )
        else:
            source = by_uid.get(payload["ref"]["sop_instance_uid"])
            refs, pixels = ([], None) if source is None else _plane(payload, source)
        if not refs or pixels is None:
            raise ValueError(f"Heatmap of {key!r} refers to instances not in the {len(sources)} sources")
        pm = self._pm(refs, pixels, prediction, key)
        # General Series Laterality is Type 2C (paired body parts): the source's side, else
        # present and empty (dicom3tools cannot decide the condition and wants it present).
        laterality = str(refs[0].get("Laterality") or refs[0].get("ImageLaterality") or "")
        pm.Laterality = laterality if laterality in ("L", "R") else ""
        return pm

    def _pm(
        self, refs: list[Dataset], pixels: Any, prediction: Prediction, key: str
    ) -> hd.pm.ParametricMap:
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
