"""Valid DICOM datasets built in memory from synthetic pixels (tests, demo, benchmarks).

- :func:`make_cxr_study`: chest radiographs (phantoms from :mod:`synthetic.phantoms`) as
  Digital X-Ray Image Storage - For Presentation (PS3.3 A.26) or Computed Radiography Image
  Storage (PS3.3 A.2).
- :func:`make_ct_series`: one axial CT series (PS3.3 A.3), built fast enough for ingest
  benchmarks of hundreds of 512 x 512 instances: the anatomy is drawn once and only the noise
  moves from slice to slice.

Every attribute of Type 1 and 2 of those IODs is present, so that ``dciodvfy`` (dicom3tools)
reports no errors; the unit tests run it. Pixels are 16-bit unsigned MONOCHROME2 with 12 bits
stored. UIDs derive deterministically from the seed (``generate_uid`` with the default prefix
and ``entropy_srcs``), unless the caller passes them. No patient data: names and IDs are made up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from synthetic.phantoms import chest_phantom

__all__ = ["CXR_SOP_CLASSES", "make_ct_series", "make_cxr_study", "save_study", "synthetic_uid"]

logger = logging.getLogger(__name__)

CXR_SOP_CLASSES: dict[str, str] = {
    "DX": str(DigitalXRayImageStorageForPresentation),
    "CR": str(ComputedRadiographyImageStorage),
}
"""Storage SOP Class UID of a synthetic radiograph, by Modality."""

_DATE, _TIME = "20250101", "080000"
_BITS_STORED = 12
_MAX_STORED = (1 << _BITS_STORED) - 1
_CXR_FIELD_MM = 430.0
"""Detector width of a synthetic radiograph: a 43 cm plate."""


def synthetic_uid(*parts: object) -> str:
    """Return a deterministic UID (default pydicom prefix) derived from ``parts``.

    >>> synthetic_uid("study", 1) == synthetic_uid("study", 1)
    True
    """
    return str(generate_uid(entropy_srcs=["pacsai-synthetic", *map(str, parts)]))


def _new_dataset(sop_class_uid: str, sop_instance_uid: str) -> FileDataset:
    """An empty dataset with File Meta Information for Explicit VR Little Endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    return ds


def _patient_and_study(ds: Dataset, patient_id: str, patient_name: str, study_uid: str, accession: str) -> None:
    """Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1)."""
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = _DATE
    ds.StudyTime = _TIME
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = accession
    ds.StudyDescription = "SYNTHETIC PHANTOM STUDY"


def _series_and_equipment(ds: Dataset, modality: str, series_uid: str, series_number: int, description: str) -> None:
    """General Series and General Equipment modules (PS3.3 C.7.3.1, C.7.5.1)."""
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDate = _DATE
    ds.SeriesTime = _TIME
    ds.SeriesDescription = description
    ds.Manufacturer = "PACS-AI Bridge synthetic"
    ds.ManufacturerModelName = "phantom"
    ds.SoftwareVersions = "1"


def _pixels_16bit(ds: Dataset, pixels: np.ndarray) -> None:
    """Image Pixel module (PS3.3 C.7.6.3): 16-bit unsigned MONOCHROME2, 12 bits stored."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = _BITS_STORED
    ds.HighBit = _BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()


def _code(value: str, meaning: str) -> DicomSequence:
    """A one-item code sequence in SNOMED CT."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "SCT"
    item.CodeMeaning = meaning
    return DicomSequence([item])


def make_cxr_study(
    seed: int,
    findings: frozenset[str] = frozenset(),
    n_images: int = 1,
    patient_id: str = "SYN0001",
    patient_name: str = "SYNTHETIC^PATIENT",
    study_uid: str | None = None,
    accession: str = "ACC0001",
    modality: str = "DX",
    size: int = 256,
) -> list[FileDataset]:
    """Build a chest radiograph study of ``n_images`` PA phantoms showing ``findings``.

    Args:
        seed: Seed of the phantoms and of the UIDs.
        findings: Phantom findings every image shows (see :mod:`synthetic.phantoms`).
        n_images: Images in the study's one series.
        patient_id: Patient ID (0010,0020).
        patient_name: Patient's Name (0010,0010).
        study_uid: Study Instance UID; derived from the seed if None.
        accession: Accession Number (0008,0050).
        modality: ``"DX"`` (DX For Presentation) or ``"CR"`` (Computed Radiography).
        size: Rows and Columns.

    Returns:
        The datasets, ready for ``save_as(path, enforce_file_format=True)``.

    Raises:
        ValueError: If ``modality`` is neither DX nor CR, or ``n_images`` is below 1.
    """
    if modality not in CXR_SOP_CLASSES:
        raise ValueError(f'Got modality "{modality}"; expected one of {sorted(CXR_SOP_CLASSES)}')
    if n_images < 1:
        raise ValueError(f"Got n_images={n_images}; expected at least 1")
    study_uid = study_uid or synthetic_uid("cxr-study", seed, patient_id, accession)
    series_uid = synthetic_uid(study_uid, "series", modality)
    rng = np.random.default_rng(seed)
    datasets = []
    for index in range(n_images):
        phantom = chest_phantom(rng, size, findings)
        stored = np.rint(phantom.image * _MAX_STORED).astype(np.uint16)
        ds = _new_dataset(CXR_SOP_CLASSES[modality], synthetic_uid(series_uid, index))
        _patient_and_study(ds, patient_id, patient_name, study_uid, accession)
        _series_and_equipment(ds, modality, series_uid, 1, "SYNTHETIC CHEST PA")
        _radiograph_image(ds, index + 1, size, sorted(phantom.findings))
        _pixels_16bit(ds, stored)
        (_dx_modules if modality == "DX" else _cr_modules)(ds)
        datasets.append(ds)
    return datasets


def _radiograph_image(ds: Dataset, number: int, size: int, findings: list[str]) -> None:
    """General Image, anatomy and spacing attributes shared by DX and CR."""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = number
    ds.ContentDate = _DATE
    ds.ContentTime = _TIME
    ds.AcquisitionDate = _DATE
    ds.AcquisitionTime = _TIME
    ds.PatientOrientation = ["L", "F"]  # PA: rows run to the patient's left, columns to the feet
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = _code("51185008", "Chest")  # CID 4031
    spacing = round(_CXR_FIELD_MM / size, 4)
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    shown = ", ".join(findings) if findings else "none"
    ds.ImageComments = f"Synthetic phantom, not a patient. Findings: {shown}"
    ds.WindowCenter = (_MAX_STORED + 1) // 2
    ds.WindowWidth = _MAX_STORED + 1


def _dx_modules(ds: Dataset) -> None:
    """DX Series, DX Image and DX Detector modules (PS3.3 C.8.11.1, C.8.11.3, C.8.11.4)."""
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.DetectorType = "DIRECT"
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "Synthetic: nominal detector pitch"
    ds.PositionerType = ""
    ds.ViewCodeSequence = _code("399348003", "postero-anterior")  # CID 4010
    ds.AcquisitionContextSequence = DicomSequence([])
    ds.KVP = 120
    ds.DistanceSourceToDetector = 1800
    ds.DistanceSourceToPatient = 1650


def _cr_modules(ds: Dataset) -> None:
    """CR Series and CR Image modules (PS3.3 C.8.1.1, C.8.1.2)."""
    ds.KVP = 120
    ds.PlateType = "SYNTHETIC"
    ds.PatientPosition = ""


def make_ct_series(
    seed: int,
    n_slices: int,
    rows: int = 512,
    cols: int = 512,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "SYN0002",
    patient_name: str = "SYNTHETIC^CT",
    accession: str = "ACC0002",
    slice_thickness: float = 1.0,
    pixel_spacing: float = 0.7,
) -> list[FileDataset]:
    """Build one axial CT series of a synthetic chest (body, lungs, spine, noise).

    Args:
        seed: Seed of the pixels and of the UIDs.
        n_slices: Number of instances.
        rows: Rows of each slice.
        cols: Columns of each slice.
        study_uid: Study Instance UID; derived from the seed if None.
        series_uid: Series Instance UID; derived from the study UID if None.
        patient_id: Patient ID.
        patient_name: Patient's Name.
        accession: Accession Number.
        slice_thickness: Slice Thickness and spacing between slices, in mm.
        pixel_spacing: In-plane spacing, in mm.

    Returns:
        The datasets, head to feet, ready for ``save_as(path, enforce_file_format=True)``.

    Raises:
        ValueError: If ``n_slices`` is below 1 or a slice is smaller than 16 x 16.
    """
    if n_slices < 1 or rows < 16 or cols < 16:
        raise ValueError(f"Got n_slices={n_slices}, {rows}x{cols}; expected >= 1 of >= 16x16")
    study_uid = study_uid or synthetic_uid("ct-study", seed, patient_id, accession)
    series_uid = series_uid or synthetic_uid(study_uid, "series", "CT")
    frame_of_reference = synthetic_uid(study_uid, "frame-of-reference")
    rng = np.random.default_rng(seed)
    anatomy = _ct_anatomy(rows, cols)
    noise = np.rint(rng.normal(0.0, 12.0, (rows, cols))).astype(np.int16)
    origin = (-cols * pixel_spacing / 2, -rows * pixel_spacing / 2)
    datasets = []
    for index in range(n_slices):
        hu = anatomy + np.roll(noise, (index * 37) % rows, axis=0)
        stored = np.clip(hu + 1024, 0, _MAX_STORED).astype(np.uint16)
        ds = _new_dataset(str(CTImageStorage), synthetic_uid(series_uid, index))
        _patient_and_study(ds, patient_id, patient_name, study_uid, accession)
        _series_and_equipment(ds, "CT", series_uid, 2, "SYNTHETIC CHEST CT")
        z = -index * slice_thickness
        _ct_image(ds, index + 1, frame_of_reference, (*origin, z), slice_thickness, pixel_spacing)
        _pixels_16bit(ds, stored)
        datasets.append(ds)
    return datasets


def _ct_anatomy(rows: int, cols: int) -> np.ndarray:
    """One axial chest slice in HU (int16): air, body, two lungs, a vertebra."""
    v = (np.arange(rows)[:, None] + 0.5) / rows - 0.5
    u = (np.arange(cols)[None, :] + 0.5) / cols - 0.5
    hu = np.full((rows, cols), -1000, dtype=np.int16)
    hu[(u / 0.42) ** 2 + (v / 0.3) ** 2 < 1] = 40
    for cx in (-0.19, 0.19):
        hu[((u - cx) / 0.15) ** 2 + ((v + 0.02) / 0.22) ** 2 < 1] = -850
    hu[(u / 0.05) ** 2 + ((v - 0.2) / 0.05) ** 2 < 1] = 700
    return hu


def _ct_image(
    ds: Dataset,
    number: int,
    frame_of_reference: str,
    position: tuple[float, float, float],
    thickness: float,
    spacing: float,
) -> None:
    """Frame of Reference, General Image, Image Plane and CT Image modules (PS3.3 C.7.4.1,
    C.7.6.1, C.7.6.2, C.8.2.1)."""
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = number
    ds.ContentDate = _DATE
    ds.ContentTime = _TIME
    ds.AcquisitionNumber = 1
    ds.BodyPartExamined = "CHEST"
    ds.ImagePositionPatient = [round(c, 4) for c in position]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = thickness
    ds.SliceLocation = round(position[2], 4)
    ds.PixelSpacing = [spacing, spacing]
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.KVP = 120
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.BurnedInAnnotation = "NO"


def save_study(datasets: Iterable[Dataset], directory: Path) -> list[Path]:
    """Write each dataset as ``<directory>/<SOPInstanceUID>.dcm`` (a DICOM Part 10 file).

    Args:
        datasets: Datasets with File Meta Information (as built here).
        directory: Created if missing.

    Returns:
        The paths written, in order.

    Raises:
        OSError: If a file cannot be written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
