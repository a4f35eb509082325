"""De-identification for research export (issue 13, item 6): PS3.15 Annex E with its options.

The property every test here comes back to: no value of any identifying attribute of the
source appears in any output byte (``tests.deid_leaks``), for data sets built here and for
pydicom's own test files (real-world files from several vendors and IODs).
"""

from __future__ import annotations

from datetime import date
from io import BytesIO

import numpy as np
import pytest
from pydicom import config as dicom_config
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from core.deid import Action, Deidentifier, MaskRegion, burned_in_reason, profile_actions
from core.deid_keys import DateShift, DeidKeys, project_key, shift_da, shift_da_tm, shift_dt, shift_tm
from tests.deid_leaks import identifying_values, leaks

KEY = project_key(b"unit-test-export-key-of-32-bytes!", "proj-a")
OTHER = project_key(b"unit-test-export-key-of-32-bytes!", "proj-b")


def _ct(sop: str, patient: str = "MRN-778812", study: str = "1.2.826.0.1.3680043.9.7.1") -> Dataset:
    """A CT header full of identifying values, nested and private ones included."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "WARD7_MODALITY"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "DOE^JANE^QUINN", patient, "19610412", "F"
    ds.PatientAddress = "12 Elm Street Springfield"
    ds.OtherPatientIDsSequence = Sequence([Dataset()])
    ds.OtherPatientIDsSequence[0].PatientID = "ALT-55120"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, study + ".2"
    ds.FrameOfReferenceUID = study + ".9"
    ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.SeriesTime = "20240301", "233015", "20240301", "233512"
    ds.AcquisitionDateTime = "20240301233015.250000+0100"
    ds.AccessionNumber, ds.StudyID = "ACC99120", "ST4411"
    ds.ReferringPhysicianName, ds.OperatorsName = "HOUSE^GREGORY", "CHASE^ROBERT"
    ds.InstitutionName, ds.StationName = "Princeton Plainsboro Teaching", "CTSCAN-EAST-3"
    ds.StudyDescription = "CT CHEST Quinn 2024-03-01 follow-up"
    ds.Modality, ds.Manufacturer, ds.BodyPartExamined = "CT", "ACME", "CHEST"
    ds.RequestAttributesSequence = Sequence([Dataset()])
    ds.RequestAttributesSequence[0].RequestedProcedureID = "RP-88123"
    ds.add_new(0x00091010, "LO", "PRIVATE-SECRET-991")
    ds.add_new(0x00090010, "LO", "ACME PRIVATE")
    ds.add_new(0x60004000, "LT", "overlay note by Dr Quinn")
    ds.BurnedInAnnotation = "NO"
    return ds


def _bytes(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_no_identifying_value_of_a_built_header_appears_in_the_output() -> None:
    source = _ct("1.2.826.0.1.3680043.9.7.1.3.1")
    result = Deidentifier(DeidKeys(KEY)).apply(source)
    assert result.dataset is not None
    out = _bytes(result.dataset)
    values = identifying_values([source])
    assert {"DOE^JANE^QUINN", "MRN-778812", "ALT-55120", "RP-88123", "2024-03-01", "PRIVATE-SECRET-991"} <= values
    assert leaks(values, [out]) == []
    assert source.PatientName == "DOE^JANE^QUINN"  # the source is never changed


def test_the_leak_check_can_fail() -> None:
    source = _ct("1.2.826.0.1.3680043.9.7.1.3.1")
    assert leaks(identifying_values([source]), [_bytes(source)]) != []


REAL_WORLD = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm", "rtstruct.dcm"]
REAL_WORLD += ["ExplVR_BigEnd.dcm", "waveform_ecg.dcm", "MR_small_jp2klossless.dcm", "MR_small_implicit.dcm"]
REAL_WORLD += ["examples_overlay.dcm", "liver_1frame.dcm", "examples_palette.dcm", "MR_small_RLE.dcm"]


@pytest.mark.parametrize("name", REAL_WORLD)
def test_no_identifying_value_of_a_real_world_file_appears_in_the_output(name: str, monkeypatch) -> None:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not in this pydicom install")
    monkeypatch.setattr(dicom_config.settings, "reading_validation_mode", dicom_config.WARN)
    monkeypatch.setattr(dicom_config.settings, "writing_validation_mode", dicom_config.WARN)
    source = dcmread(path, force=True)
    values = identifying_values([source])
    result = Deidentifier(DeidKeys(KEY)).apply(source)
    assert values, "the file has identifying attributes to check"
    assert result.dataset is not None, result.row.reason
    assert leaks(values, [_bytes(result.dataset)]) == []
    assert result.dataset.PatientIdentityRemoved == "YES"


def test_pseudonyms_and_uids_are_consistent_within_a_project_and_differ_between_projects() -> None:
    a, b = _ct("1.2.826.0.1.3680043.9.7.1.3.1"), _ct("1.2.826.0.1.3680043.9.7.1.3.2")
    b.ReferencedImageSequence = Sequence([Dataset()])
    b.ReferencedImageSequence[0].ReferencedSOPClassUID = CTImageStorage
    b.ReferencedImageSequence[0].ReferencedSOPInstanceUID = a.SOPInstanceUID
    da, db = (Deidentifier(DeidKeys(KEY)).apply(x).dataset for x in (a, b))
    assert da is not None and db is not None
    assert da.PatientID == db.PatientID == da.PatientName and da.PatientID.startswith("PAT-")
    assert da.StudyInstanceUID == db.StudyInstanceUID and da.FrameOfReferenceUID == db.FrameOfReferenceUID
    assert db.ReferencedImageSequence[0].ReferencedSOPInstanceUID == da.SOPInstanceUID
    assert db.ReferencedImageSequence[0].ReferencedSOPClassUID == CTImageStorage  # classes are kept
    assert da.file_meta.MediaStorageSOPInstanceUID == da.SOPInstanceUID and da.SOPInstanceUID.startswith("2.25.")
    other = Deidentifier(DeidKeys(OTHER)).apply(a).dataset
    assert other is not None
    assert other.PatientID != da.PatientID and other.StudyInstanceUID != da.StudyInstanceUID
    assert other.StudyDate != da.StudyDate or other.StudyTime != da.StudyTime


def test_dates_move_by_one_offset_per_patient_so_intervals_are_kept() -> None:
    first, later = _ct("1.2.3.1"), _ct("1.2.3.2", study="1.2.3.77")
    later.StudyDate, later.SeriesDate = "20240419", "20240419"  # 49 days after
    d1, d2 = (Deidentifier(DeidKeys(KEY)).apply(x).dataset for x in (first, later))
    assert d1 is not None and d2 is not None
    assert d1.StudyDate != "20240301"
    assert _day(d2.SeriesDate) - _day(d1.SeriesDate) == (date(2024, 4, 19) - date(2024, 3, 1))
    # the date-time and the date+time pair it equals move to the same instant
    assert d1.AcquisitionDateTime[:14] == d1.StudyDate + d1.StudyTime
    assert d1.AcquisitionDateTime.endswith(".250000+0100")
    assert d1.LongitudinalTemporalInformationModified == "MODIFIED"
    assert d1.PatientBirthDate == ""  # the birth date is removed, not moved
    assert "PatientAddress" not in d1 and "OtherPatientIDsSequence" not in d1


def _day(value: str) -> date:
    return date(int(value[:4]), int(value[4:6]), int(value[6:]))


def test_shifts_keep_precision_and_reject_what_does_not_parse() -> None:
    s = DateShift(days=10, seconds=90)
    assert shift_da("20240105", s) == "20231226"
    assert shift_tm("1201", s) == "1202" and shift_tm("120100.123", s) == "120230.123"
    assert shift_tm("12:01:00", s) == "120230"
    assert shift_da_tm("20240105", "235930", s) == ("20231227", "000100")
    assert shift_dt("2024", s) == "2023" and shift_dt("202401051200", s) == "202312261201"
    assert shift_da("1997.04.24", s) is None and shift_tm("99", s) is None and shift_dt("x", s) is None
    ds = _ct("1.2.3.4")
    # the ACR-NEMA form some old modalities still send
    ds.add(DataElement(0x00080021, "DA", "1997.04.24", validation_mode=dicom_config.IGNORE))
    monkey = Deidentifier(DeidKeys(KEY)).apply(ds).dataset
    assert monkey is not None and monkey.SeriesDate == ""  # emptied, never kept as it was


def test_clean_descriptors_keep_the_description_without_identifying_words() -> None:
    out = Deidentifier(DeidKeys(KEY)).apply(_ct("1.2.3.5")).dataset
    assert out is not None
    assert out.StudyDescription == "CT CHEST follow-up"
    assert out.BodyPartExamined == "CHEST" and out.Manufacturer == "ACME"


def test_private_attributes_overlays_and_sender_names_are_removed_and_the_method_recorded() -> None:
    out = Deidentifier(DeidKeys(KEY)).apply(_ct("1.2.3.6")).dataset
    assert out is not None
    assert not any(e.tag.is_private for e in out) and 0x60004000 not in out
    assert "SourceApplicationEntityTitle" not in out.file_meta
    assert out.PatientIdentityRemoved == "YES"
    codes = {item.CodeValue for item in out.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113105", "113107"}
    assert out.AccessionNumber == "" and out.ReferringPhysicianName == "" and out.OperatorsName == ""


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"BurnedInAnnotation": "YES"}, "Burned In Annotation is YES"),
        ({"SOPClassUID": SecondaryCaptureImageStorage}, "screen capture class Secondary Capture Image"),
        ({"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]}, "Image Type SCREEN SAVE"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.104.1"}, "encapsulated document: Encapsulated PDF"),
        (
            {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.33"},
            "free text is not de-identified (no Clean Structured Content)",
        ),
    ],
)
def test_images_that_may_show_text_are_excluded_and_named_in_the_manifest(change: dict, reason: str) -> None:
    ds = _ct("1.2.3.7")
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    result = Deidentifier(DeidKeys(KEY)).apply(ds)
    assert result.dataset is None and result.row.excluded and result.row.reason.endswith(reason)
    assert burned_in_reason(_ct("1.2.3.8")) is None
    assert result.row.sop_uid == DeidKeys(KEY).uid("1.2.3.7") and result.row.patient.startswith("PAT-")


def test_burned_in_text_is_masked_when_regions_are_given() -> None:
    ds = _ct("1.2.3.9")
    ds.BurnedInAnnotation = "YES"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 8, 8, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(64, dtype="<u2") + 100).tobytes()
    result = Deidentifier(DeidKeys(KEY), [MaskRegion(0, 0, 8, 2)]).apply(ds)
    assert result.dataset is not None and not result.row.excluded and result.row.reason.startswith("masked")
    pixels = np.frombuffer(result.dataset.PixelData, "<u2").reshape(8, 8)
    assert (pixels[:2] == 100).all() and (pixels[2:] == np.arange(16, 64).reshape(6, 8) + 100).all()


def test_the_manifest_row_holds_nothing_identifying() -> None:
    source = _ct("1.2.826.0.1.3680043.9.7.1.3.1")
    row = Deidentifier(DeidKeys(KEY)).apply(source).row
    text = " ".join(str(v) for v in (row.patient, row.study_uid, row.series_uid, row.sop_uid, row.study_date))
    assert leaks(identifying_values([source]), [text.encode()]) == []
    assert (
        row.modality == "CT"
        and not row.excluded
        and row.study_date == Deidentifier(DeidKeys(KEY)).apply(source).dataset.StudyDate
    )  # type: ignore[union-attr]


def test_the_table_is_annex_e_with_the_options_applied() -> None:
    table = profile_actions()
    assert len(table) > 600
    assert table[0x00100010] is Action.DUMMY and table[0x00100020] is Action.DUMMY  # pseudonyms
    assert table[0x00080020] is Action.SHIFT and table[0x0008002A] is Action.SHIFT  # modified dates
    assert table[0x00100030] is Action.EMPTY  # birth date: Z, not moved
    assert table[0x0020000D] is Action.UID and table[0x00081155] is Action.UID  # keyed UIDs
    assert table[0x00081030] is Action.CLEAN and table[0x0008103E] is Action.CLEAN  # clean descriptors
    assert table[0x00080050] is Action.EMPTY and table[0x00101040] is Action.REMOVE
    assert table[0x0040A730] is Action.REMOVE  # Content Sequence: no Clean Structured Content
    assert 0x00080016 not in table and 0x00080060 not in table  # SOP Class, Modality: kept
