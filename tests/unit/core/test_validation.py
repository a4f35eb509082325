from __future__ import annotations

import pytest
from pydicom import config, dcmread
from pydicom.data import get_testdata_file

from core.validation import ReasonCode, Validator


@pytest.fixture
def ct():
    return dcmread(get_testdata_file("CT_small.dcm"))


def codes(ds, ts="1.2.840.10008.1.2.1"):
    return {i.code for i in Validator().check_instance(ds, ts)}


def test_valid_image_has_no_issues(ct):
    assert Validator().check_instance(ct, "1.2.840.10008.1.2.1") == []


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"])
def test_missing_uid(ct, keyword):
    del ct[keyword]
    assert ReasonCode.MISSING_ATTRIBUTE in codes(ct)


def test_invalid_uid_syntax(ct):
    with config.disable_value_validation():
        ct.SeriesInstanceUID = "1.2.03.abc"
    issues = Validator().check_instance(ct, "")
    assert any(i.code == ReasonCode.INVALID_UID and "SeriesInstanceUID" in i.message for i in issues)


def test_missing_modality(ct):
    del ct.Modality
    assert ReasonCode.MISSING_ATTRIBUTE in codes(ct)


def test_truncated_native_pixel_data(ct):
    ct.PixelData = ct.PixelData[:-100]
    issues = Validator().check_instance(ct, "1.2.840.10008.1.2.1")
    assert [i.code for i in issues] == [ReasonCode.PIXEL_LENGTH_MISMATCH]
    assert "expected 32768" in issues[0].message


def test_wrong_rows(ct):
    ct.Rows = 100
    assert ReasonCode.PIXEL_LENGTH_MISMATCH in codes(ct)


def test_bits_stored_above_allocated(ct):
    ct.BitsStored = 20
    assert ReasonCode.PIXEL_ATTRIBUTES_INCONSISTENT in codes(ct)


def test_missing_pixel_attribute(ct):
    del ct.PhotometricInterpretation
    assert ReasonCode.MISSING_ATTRIBUTE in codes(ct)


def test_empty_pixel_data(ct):
    ct.PixelData = b""
    assert ReasonCode.PIXEL_DATA_MISSING in codes(ct)


def test_non_image_objects_need_no_pixel_attributes(ct):
    for kw in (
        "PixelData",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PixelRepresentation",
        "HighBit",
    ):
        if kw in ct:
            del ct[kw]
    assert codes(ct) == set()


def test_attribute_text_never_raises_on_invalid_values():
    """The listener files data with invalid values (the validator flags them later); pydicom's
    own conversion raises under strict reading, as in this suite."""
    from core.validation import attribute_text
    from tests.corruptions import cxr, put, reread

    ds = cxr(9)
    put(ds, "SeriesInstanceUID", "1." + "2" * 70)
    back = reread(ds)
    assert config.settings.reading_validation_mode == config.RAISE
    with pytest.raises(ValueError):
        back.SeriesInstanceUID  # noqa: B018 - pydicom refuses it
    assert attribute_text(back, "SeriesInstanceUID") == "1." + "2" * 70
    assert attribute_text(back, "Modality") == "DX"
    assert attribute_text(back, "AcquisitionNumber") == ""
