"""Synthetic DICOM series of any body part from phantom arrays (tests, demo, benchmarks).

- :func:`make_volume_series`: a CT Image (PS3.3 A.3) or MR Image (A.4) series of single-frame
  axial slices from a ``(slices, rows, columns)`` array in modality units (HU for CT).
- :func:`to_enhanced`: the same slices as one multi-frame Legacy Converted Enhanced CT / MR
  instance (highdicom's converter; per-frame functional groups), optionally with its frames
  stored in a shuffled order, so that frame number and position disagree.
- :func:`make_radiograph_study`: DX / CR radiographs of any body part (limbs for the fracture
  model) from ``[0, 1]`` images.
- :func:`encode`: a dataset as Part 10 bytes in a given transfer syntax (implicit VR, explicit
  VR little and big endian, deflated, RLE, JPEG-LS and JPEG 2000 lossless).

Slice ``k`` of a volume lies at ``z = -k * spacing`` (head first), which is also index ``k``
of the volume highdicom (and :mod:`models.volumes`) builds from it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from io import BytesIO

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)

from synthetic.synthetic_dicom import (
    CXR_SOP_CLASSES,
    _code,
    _cr_modules,
    _dx_modules,
    _new_dataset,
    _patient_and_study,
    _pixels_16bit,
    _radiograph_image,
    _series_and_equipment,
    synthetic_uid,
)

__all__ = [
    "LOSSLESS_SYNTAXES",
    "encode",
    "make_radiograph_study",
    "make_volume_series",
    "to_enhanced",
]

logger = logging.getLogger(__name__)

LOSSLESS_SYNTAXES: tuple[str, ...] = (
    str(ImplicitVRLittleEndian),
    str(ExplicitVRLittleEndian),
    str(ExplicitVRBigEndian),
    str(DeflatedExplicitVRLittleEndian),
    str(RLELossless),
    str(JPEGLSLossless),
    str(JPEG2000Lossless),
)
"""Transfer syntaxes a PACS may use without changing a pixel value."""

_CT_OFFSET = 1024
_MAX_STORED = 4095


def make_volume_series(
    values: np.ndarray,
    *,
    modality: str,
    spacing: tuple[float, float, float],
    seed: int,
    body_part: str,
    series_description: str,
    study_uid: str | None = None,
    patient_id: str = "SYN0003",
    patient_name: str = "SYNTHETIC^VOLUME",
    accession: str = "ACC0003",
    instance_numbers: Sequence[int] | None = None,
) -> list[FileDataset]:
    """Build one axial series, one single-frame instance per slice of ``values``.

    Args:
        values: ``(slices, rows, columns)`` in HU (CT) or arbitrary MR units (>= 0).
        modality: ``"CT"`` or ``"MR"``.
        spacing: (slice, row, column) spacing in mm.
        seed: Seed of the UIDs.
        body_part: Body Part Examined (0018,0015).
        series_description: Series Description (0008,103E).
        study_uid: Study Instance UID; derived from the seed if None.
        patient_id: Patient ID.
        patient_name: Patient's Name.
        accession: Accession Number.
        instance_numbers: Instance Number of each slice (default 1..n in slice order); tests
            scramble them to prove that order never comes from Instance Number.

    Returns:
        The datasets in slice order (slice ``k`` at ``z = -k * spacing[0]``).

    Raises:
        ValueError: If ``modality`` is not CT or MR, or ``values`` is not 3D.
    """
    if modality not in ("CT", "MR") or values.ndim != 3:
        raise ValueError(f"Got modality {modality!r}, values {values.shape}; expected CT/MR, 3D")
    spacing = (round(spacing[0], 4), round(spacing[1], 4), round(spacing[2], 4))  # DS: 16 chars
    study_uid = study_uid or synthetic_uid("volume-study", seed, patient_id, accession)
    series_uid = synthetic_uid(study_uid, "series", modality, series_description)
    frame_of_reference = synthetic_uid(study_uid, "frame-of-reference", series_description)
    numbers = list(instance_numbers or range(1, values.shape[0] + 1))
    origin = (-values.shape[2] * spacing[2] / 2, -values.shape[1] * spacing[1] / 2)
    sop_class = str(CTImageStorage if modality == "CT" else MRImageStorage)
    datasets = []
    for k in range(values.shape[0]):
        ds = _new_dataset(sop_class, synthetic_uid(series_uid, k))
        _patient_and_study(ds, patient_id, patient_name, study_uid, accession)
        _series_and_equipment(ds, modality, series_uid, 3, series_description)
        _plane(ds, numbers[k], frame_of_reference, (*origin, -k * spacing[0]), spacing, body_part)
        if modality == "CT":
            stored = np.clip(np.rint(values[k]) + _CT_OFFSET, 0, _MAX_STORED)
            _ct_attributes(ds)
        else:
            stored = np.clip(np.rint(values[k]), 0, _MAX_STORED)
            _mr_attributes(ds, spacing[0])
        _pixels_16bit(ds, stored.astype(np.uint16))
        datasets.append(ds)
    return datasets


def _plane(
    ds: Dataset,
    number: int,
    frame_of_reference: str,
    position: tuple[float, float, float],
    spacing: tuple[float, float, float],
    body_part: str,
) -> None:
    """Frame of Reference, General Image and Image Plane modules (PS3.3 C.7.4.1, C.7.6.1-2)."""
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = number
    ds.ContentDate, ds.ContentTime = "20250101", "080000"
    ds.AcquisitionNumber = 1
    ds.BodyPartExamined = body_part
    ds.ImagePositionPatient = [round(c, 4) for c in position]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = spacing[0]
    ds.SpacingBetweenSlices = spacing[0]
    ds.SliceLocation = round(position[2], 4)
    ds.PixelSpacing = [spacing[1], spacing[2]]
    ds.BurnedInAnnotation = "NO"


def _ct_attributes(ds: Dataset) -> None:
    """CT Image module (PS3.3 C.8.2.1)."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.RescaleIntercept = -_CT_OFFSET
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.KVP = 120
    ds.WindowCenter, ds.WindowWidth = 40, 400


def _mr_attributes(ds: Dataset, thickness: float) -> None:
    """MR Image module (PS3.3 C.8.3.1): a T1-weighted spin echo, post contrast."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = 500
    ds.EchoTime = 15
    ds.EchoTrainLength = 1
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = 1.5
    ds.ContrastBolusAgent = "GADOLINIUM (SYNTHETIC)"
    ds.WindowCenter, ds.WindowWidth = 600, 1200


def to_enhanced(datasets: Sequence[FileDataset], frame_order: Sequence[int] | None = None) -> FileDataset:
    """Convert a single-frame CT or MR series to one Legacy Converted Enhanced instance.

    Args:
        datasets: The series, as :func:`make_volume_series` builds it.
        frame_order: ``frame_order[j]`` is the slice stored as frame ``j + 1``; None keeps
            highdicom's order (by position).

    Returns:
        The multi-frame instance (Explicit VR Little Endian), frames in ``frame_order``.

    Raises:
        ValueError: If ``frame_order`` is not a permutation of the slices.
    """
    first = datasets[0]
    converter = (
        hd.legacy.LegacyConvertedEnhancedCTImage if first.Modality == "CT" else hd.legacy.LegacyConvertedEnhancedMRImage
    )
    uid = synthetic_uid(first.SeriesInstanceUID, "enhanced")
    enhanced = converter(
        list(datasets),
        series_instance_uid=synthetic_uid(uid, "series"),
        series_number=int(first.SeriesNumber) + 100,
        sop_instance_uid=uid,
        instance_number=1,
    )
    enhanced.BodyPartExamined = first.get("BodyPartExamined", "")  # routing reads it here
    if frame_order is not None:
        _reorder_frames(enhanced, datasets, frame_order)
    buffer = BytesIO()
    enhanced.save_as(buffer, enforce_file_format=True)
    from pydicom import dcmread

    return dcmread(BytesIO(buffer.getvalue()))  # type: ignore[return-value]


def _reorder_frames(enhanced: Dataset, datasets: Sequence[Dataset], order: Sequence[int]) -> None:
    """Store slice ``order[j]`` as frame ``j + 1`` (functional groups and pixels together)."""
    if sorted(order) != list(range(len(datasets))):
        raise ValueError(f"Got frame_order {list(order)[:8]}...; expected a permutation")
    by_uid = {
        item.ConversionSourceAttributesSequence[0].ReferencedSOPInstanceUID: i
        for i, item in enumerate(enhanced.PerFrameFunctionalGroupsSequence)
    }
    current = [by_uid[str(datasets[k].SOPInstanceUID)] for k in order]
    frames = np.frombuffer(enhanced.PixelData, dtype="<u2").reshape(
        len(datasets), int(enhanced.Rows), int(enhanced.Columns)
    )
    enhanced.PixelData = np.ascontiguousarray(frames[current]).tobytes()
    items = list(enhanced.PerFrameFunctionalGroupsSequence)
    enhanced.PerFrameFunctionalGroupsSequence = [items[i] for i in current]


def make_radiograph_study(
    images: Sequence[np.ndarray],
    *,
    seed: int,
    body_part: str,
    region: tuple[str, str],
    laterality: str = "L",
    modality: str = "DX",
    field_mm: float = 240.0,
    study_uid: str | None = None,
    patient_id: str = "SYN0004",
    patient_name: str = "SYNTHETIC^LIMB",
    accession: str = "ACC0004",
    comments: str = "",
) -> list[FileDataset]:
    """Build one radiograph series of any body part from ``[0, 1]`` images (bright = dense).

    Args:
        images: 2D arrays in [0, 1].
        seed: Seed of the UIDs.
        body_part: Body Part Examined, e.g. ``"FOREARM"``.
        region: Anatomic Region (SNOMED CT code value, meaning), CID 4031.
        laterality: Image Laterality (L, R or U).
        modality: ``"DX"`` or ``"CR"``.
        field_mm: Detector width covered by an image.
        study_uid: Study Instance UID; derived from the seed if None.
        patient_id: Patient ID.
        patient_name: Patient's Name.
        accession: Accession Number.
        comments: Image Comments (what the phantom shows).

    Returns:
        The datasets.

    Raises:
        ValueError: If ``modality`` is not DX or CR.
    """
    if modality not in CXR_SOP_CLASSES:
        raise ValueError(f"Got modality {modality!r}; expected one of {sorted(CXR_SOP_CLASSES)}")
    study_uid = study_uid or synthetic_uid("radiograph-study", seed, patient_id, accession)
    series_uid = synthetic_uid(study_uid, "series", modality, body_part)
    datasets = []
    for index, image in enumerate(images):
        stored = np.rint(np.clip(image, 0.0, 1.0) * _MAX_STORED).astype(np.uint16)
        ds = _new_dataset(CXR_SOP_CLASSES[modality], synthetic_uid(series_uid, index))
        _patient_and_study(ds, patient_id, patient_name, study_uid, accession)
        _series_and_equipment(ds, modality, series_uid, 1, f"SYNTHETIC {body_part}")
        _radiograph_image(ds, index + 1, image.shape[0], [])
        spacing = round(field_mm / image.shape[1], 4)
        ds.ImagerPixelSpacing = ds.PixelSpacing = [spacing, spacing]
        ds.BodyPartExamined = body_part
        ds.AnatomicRegionSequence = _code(*region)
        ds.ViewPosition = "AP"
        ds.ImageLaterality = laterality
        ds.PatientOrientation = ["L", "F"] if laterality != "R" else ["R", "F"]
        ds.ImageComments = f"Synthetic phantom, not a patient. {comments}".strip()
        _pixels_16bit(ds, stored)
        (_dx_modules if modality == "DX" else _cr_modules)(ds)
        if modality == "DX":
            ds.ViewCodeSequence = _code("399348003", "antero-posterior")
        datasets.append(ds)
    return datasets


def encode(ds: Dataset, transfer_syntax_uid: str) -> bytes:
    """Return ``ds`` as Part 10 bytes in a lossless transfer syntax (pixel values unchanged).

    Args:
        ds: An uncompressed dataset with File Meta Information (not modified).
        transfer_syntax_uid: One of ``LOSSLESS_SYNTAXES``.

    Returns:
        The file bytes.

    Raises:
        ValueError: If the syntax is not one of ``LOSSLESS_SYNTAXES``.
    """
    if transfer_syntax_uid not in LOSSLESS_SYNTAXES:
        raise ValueError(f"Got {transfer_syntax_uid}; expected one of {LOSSLESS_SYNTAXES}")
    out = copy.deepcopy(ds)
    buffer = BytesIO()
    if transfer_syntax_uid in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        out.compress(transfer_syntax_uid)
        out.save_as(buffer, enforce_file_format=True)
    elif transfer_syntax_uid == ExplicitVRBigEndian:
        pixels = out.pixel_array
        out.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        out.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
        dcmwrite(buffer, out, implicit_vr=False, little_endian=False, force_encoding=True)
    else:
        out.file_meta.TransferSyntaxUID = transfer_syntax_uid
        out.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
