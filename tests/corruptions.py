"""A catalogue of generated corruptions of valid synthetic DICOM, each with the reason code the
validator must give. Shared by the unit tests (pure validator) and the integration test (real
listener + pipeline).

Every ``build(seed)`` starts from valid synthetic data (``synthetic.synthetic_dicom``: a 64 x 64 DX
radiograph, or a CT series of 32 x 32 slices), breaks one thing, and returns the datasets to
send. Files are written with :func:`write`, which keeps the File Meta Information exactly as
given (so meta/data-set contradictions survive) and ignores pydicom's value validation (so
invalid values can be written at all).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import config, dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filewriter import dcmwrite, write_file_meta_info
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from synthetic.synthetic_dicom import make_ct_series, make_cxr_study

__all__ = ["CORRUPTIONS", "Corruption", "ct", "cxr", "put", "reread", "unparseable_part10", "write"]


@dataclass(frozen=True)
class Corruption:
    """One kind of broken input and the reason code it must be quarantined with."""

    name: str
    code: str
    build: Callable[[int], list[FileDataset]]
    round_trips: bool = True
    """Whether it can be written and read back under the suite's strict pydicom settings (a
    malformed transfer syntax cannot be written; an unknown one cannot be read strictly)."""


def cxr(seed: int, size: int = 64) -> FileDataset:
    """One valid synthetic DX radiograph."""
    return make_cxr_study(seed=seed, size=size, patient_id=f"ZQ{seed}Z", accession=f"A{seed}")[0]


def ct(seed: int, n: int = 5) -> list[FileDataset]:
    """A valid synthetic CT series of 32 x 32 slices, 1 mm apart."""
    return make_ct_series(seed=seed, n_slices=n, rows=32, cols=32, patient_id=f"ZQ{seed}Z", accession=f"A{seed}")


def write(ds: Dataset, target: Path | BytesIO) -> None:
    """Write ``ds`` as a Part 10 file with its File Meta exactly as set, invalid values included."""
    with config.disable_value_validation():
        dcmwrite(target, ds, enforce_file_format=False)


def reread(ds: Dataset) -> FileDataset:
    """Write and read back, so that the validator sees raw elements as after a C-STORE."""
    buf = BytesIO()
    write(ds, buf)
    return dcmread(BytesIO(buf.getvalue()))


def _one(change: Callable[[FileDataset], object]) -> Callable[[int], list[FileDataset]]:
    def build(seed: int) -> list[FileDataset]:
        ds = cxr(seed)
        with config.disable_value_validation():
            change(ds)
        return [ds]

    return build


def _series(change: Callable[[list[FileDataset]], object], n: int = 5) -> Callable[[int], list[FileDataset]]:
    def build(seed: int) -> list[FileDataset]:
        datasets = ct(seed, n)
        with config.disable_value_validation():
            result = change(datasets)
        return list(result) if isinstance(result, list) else datasets

    return build


def put(ds: Dataset, keyword: str, value: object) -> None:
    """Set an attribute without pydicom's value validation (elements created under the strict
    test settings keep validating on every later assignment, so they are replaced)."""
    tag = tag_for_keyword(keyword)
    ds[tag] = DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE)


def _set(keyword: str, value: object) -> Callable[[FileDataset], None]:
    return lambda ds: put(ds, keyword, value)


def _delete(keyword: str) -> Callable[[FileDataset], None]:
    return lambda ds: delattr(ds, keyword)


def _raw(tag: int, vr: str, value: object) -> Callable[[FileDataset], None]:
    def change(ds: FileDataset) -> None:
        if isinstance(value, bytes):  # bytes pydicom would refuse to convert: written raw
            ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)  # type: ignore[assignment]
        else:
            ds[tag] = DataElement(tag, vr, value, validation_mode=config.IGNORE)

    return change


def _compressed(syntax: str, change: Callable[[FileDataset], None]) -> Callable[[int], list[FileDataset]]:
    def build(seed: int) -> list[FileDataset]:
        ds = cxr(seed)
        ds.compress(syntax)
        with config.disable_value_validation():
            change(ds)
        return [ds]

    return build


def _truncate_frame(ds: FileDataset) -> None:
    [frame] = list(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])


def _frames_missing(ds: FileDataset) -> None:
    ds.NumberOfFrames = 2


def _study_tweak(keyword: str, value: str) -> Callable[[list[FileDataset]], None]:
    def change(datasets: list[FileDataset]) -> None:
        put(datasets[1], keyword, value)

    return change


def _duplicate_position(datasets: list[FileDataset]) -> None:
    datasets[2].ImagePositionPatient = copy.deepcopy(datasets[1].ImagePositionPatient)


def _gap(datasets: list[FileDataset]) -> list[FileDataset]:
    return datasets[:2] + datasets[3:]


def _other_size(datasets: list[FileDataset]) -> None:
    ds = datasets[1]
    ds.Rows, ds.Columns = 16, 16
    ds.PixelData = bytes(16 * 16 * 2)


def _tilted(datasets: list[FileDataset]) -> None:
    datasets[1].ImageOrientationPatient = [1, 0, 0, 0, 0.99863, 0.05234]  # tilted by 3 degrees


CORRUPTIONS: tuple[Corruption, ...] = (
    Corruption(
        "truncated_pixel_data",
        "pixel_length_mismatch",
        _one(lambda ds: setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 2])),
    ),
    Corruption("wrong_rows", "pixel_length_mismatch", _one(_set("Rows", 70))),
    Corruption("declared_frames_missing", "pixel_length_mismatch", _one(_set("NumberOfFrames", 3))),
    Corruption("zero_length_pixel_data", "pixel_data_missing", _one(_set("PixelData", b""))),
    Corruption("pixel_data_absent", "pixel_data_missing", _one(_delete("PixelData"))),
    Corruption("missing_sop_instance_uid", "missing_attribute", _one(_delete("SOPInstanceUID"))),
    Corruption("missing_study_uid", "missing_attribute", _one(_delete("StudyInstanceUID"))),
    Corruption("missing_patient_id", "missing_attribute", _one(_delete("PatientID"))),
    Corruption("missing_modality", "missing_attribute", _one(_delete("Modality"))),
    Corruption("missing_photometric", "missing_attribute", _one(_delete("PhotometricInterpretation"))),
    Corruption("invalid_uid_characters", "invalid_uid", _one(_set("SeriesInstanceUID", "1.2.03.abc"))),
    Corruption("uid_too_long", "invalid_uid", _one(_set("SeriesInstanceUID", "1." + "2" * 70))),
    Corruption(
        "series_uid_equals_study_uid",
        "invalid_value",
        _one(lambda ds: setattr(ds, "SeriesInstanceUID", ds.StudyInstanceUID)),
    ),
    Corruption("wrong_vr_rows_as_float", "invalid_vr", _one(_raw(0x00280010, "FL", 64.0))),
    Corruption("wrong_vr_patient_id_as_us", "invalid_vr", _one(_raw(0x00100020, "US", 7))),
    Corruption("modality_breaks_cs", "invalid_vr", _one(_set("Modality", "chest x-ray film"))),
    Corruption("number_of_frames_not_integer", "invalid_vr", _one(_raw(0x00280008, "IS", b"1A"))),
    Corruption("bits_stored_above_allocated", "pixel_attributes_inconsistent", _one(_set("BitsStored", 20))),
    Corruption("high_bit_wrong", "pixel_attributes_inconsistent", _one(_set("HighBit", 15))),
    Corruption("monochrome_with_three_samples", "pixel_attributes_inconsistent", _one(_set("SamplesPerPixel", 3))),
    Corruption("bits_allocated_12", "invalid_value", _one(_set("BitsAllocated", 12))),
    Corruption("unknown_photometric", "invalid_value", _one(_set("PhotometricInterpretation", "MONOCHROME3"))),
    Corruption("pixel_representation_2", "invalid_value", _one(_set("PixelRepresentation", 2))),
    Corruption("zero_frames", "invalid_value", _one(_set("NumberOfFrames", 0))),
    Corruption(
        "sop_instance_uid_contradicts_meta",
        "meta_mismatch",
        _one(lambda ds: put(ds.file_meta, "MediaStorageSOPInstanceUID", generate_uid())),
    ),
    Corruption("sop_class_contradicts_meta", "meta_mismatch", _one(_set("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7"))),
    Corruption(
        "unknown_transfer_syntax",
        "unsupported_transfer_syntax",
        _one(lambda ds: put(ds.file_meta, "TransferSyntaxUID", "1.3.6.1.4.1.9590.100.1.2.999")),
        round_trips=False,
    ),
    Corruption(
        "malformed_transfer_syntax",
        "invalid_uid",
        _one(lambda ds: put(ds.file_meta, "TransferSyntaxUID", "1.2.840.10008.1.2.x")),
        round_trips=False,
    ),
    Corruption("truncated_rle_stream", "pixel_data_undecodable", _compressed(RLELossless, _truncate_frame)),
    Corruption("truncated_jpeg_ls_stream", "pixel_data_undecodable", _compressed(JPEGLSLossless, _truncate_frame)),
    Corruption(
        "jpeg2000_rows_contradict_codestream",
        "pixel_attributes_inconsistent",
        _compressed(JPEG2000Lossless, _set("Rows", 32)),
    ),
    Corruption("encapsulated_frames_missing", "frame_count_mismatch", _compressed(JPEG2000Lossless, _frames_missing)),
    Corruption(
        "ct_orientation_not_unit",
        "invalid_value",
        _series(lambda ds: put(ds[0], "ImageOrientationPatient", [2, 0, 0, 0, 1, 0]), n=1),
    ),
    Corruption(
        "ct_pixel_spacing_missing", "missing_attribute", _series(lambda ds: delattr(ds[0], "PixelSpacing"), n=1)
    ),
    Corruption(
        "ct_pixel_spacing_negative", "invalid_value", _series(lambda ds: put(ds[0], "PixelSpacing", [-0.7, 0.7]), n=1)
    ),
    Corruption("mixed_patients_in_study", "patient_mismatch", _series(_study_tweak("PatientID", "OTHER"))),
    Corruption(
        "mixed_accession_in_study", "study_attribute_mismatch", _series(_study_tweak("AccessionNumber", "OTHER"))
    ),
    Corruption("mixed_modality_in_series", "series_attribute_mismatch", _series(_study_tweak("Modality", "MR"))),
    Corruption("duplicate_slice_positions", "duplicate_position", _series(_duplicate_position)),
    Corruption("missing_slice_gap", "slice_gap", _series(_gap)),
    Corruption("mixed_slice_dimensions", "series_dimensions_mismatch", _series(_other_size)),
    Corruption("mixed_slice_orientation", "series_orientation_mismatch", _series(_tilted)),
)
"""Every generated corruption kind."""


def unparseable_part10(path: Path, sop_instance_uid: str = "1.2.3.4.5.6.7") -> Path:
    """A Part 10 file with a valid header whose data set pydicom cannot parse: a sequence of
    undefined length whose items are garbage (the listener answers 0xC000). Send it raw
    (pynetdicom's ``STORE_SEND_CHUNKED_DATASET``)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    buf = BytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    buf.write(b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + bytes(range(1, 9)) * 4)
    path.write_bytes(buf.getvalue())
    return path
