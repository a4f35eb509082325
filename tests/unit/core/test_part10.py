from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info

from core.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, part10_header


def pydicom_header(sop_class, sop_uid, ts, ae):
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if ae:
        meta.SourceApplicationEntityTitle = ae
    buf = BytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    "sop_class, sop_uid, ts, ae",
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2", "STORESCU"),  # even lengths
        ("1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.45", "1.2.840.10008.1.2.4.50", "AE1"),  # odd: padded
        ("1.2.840.10008.5.1.4.1.1.4", "2.25.12345678901234567890", "1.2.840.10008.1.2.1", ""),
    ],
)
def test_header_is_byte_identical_to_pydicoms(sop_class, sop_uid, ts, ae):
    assert part10_header(sop_class, sop_uid, ts, ae) == pydicom_header(sop_class, sop_uid, ts, ae)


def test_header_reads_back():
    raw = part10_header("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.1", "X")
    ds = dcmread(BytesIO(raw + b"\x08\x00\x60\x00CS\x02\x00CT"))
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3"
    assert ds.Modality == "CT"
