"""Pixel checks and decoding against pydicom's own fixtures (standards.md 5.2 decoder matrix)."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless

from core._elements import Attributes
from core.codestreams import CodestreamError, read_header, rle_segment_count
from core.errors import RejectedInput
from core.pixels import DecodeMode, check_pixels, decode_frames, decode_plugins
from core.validation import ValidationPolicy, Validator
from tests.corruptions import ct, put, write

DECODES = [
    "MR_small_implicit.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "JPGExtended.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle_2frame.dcm",
    "liver_1frame.dcm",
    "SC_rgb_rle_32bit_2frame.dcm",
    "JPEGLSNearLossless_16.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "693_J2KI.dcm",
    "examples_jpeg2k.dcm",
]
"""ts_matrix.py's fixtures plus more syntaxes and layouts: every one decodes."""


def _pixel_codes(name: str, mode: DecodeMode = DecodeMode.ALL_FRAMES) -> list[str]:
    ds = dcmread(get_testdata_file(name))
    return [p.code for p in check_pixels(Attributes(ds), str(ds.file_meta.TransferSyntaxUID), mode)]


@pytest.mark.parametrize("name", DECODES)
def test_valid_fixtures_of_every_syntax_pass_the_pixel_checks(name):
    assert _pixel_codes(name) == []


def test_maintained_decoders_come_first():
    assert decode_plugins("1.2.840.10008.1.2.4.50")[0] == "pylibjpeg"  # before Pillow
    assert decode_plugins("1.2.840.10008.1.2.4.91")[0] == "pylibjpeg"  # openjpeg
    assert decode_plugins("1.2.840.10008.1.2.4.80")[:2] == ("pylibjpeg", "pyjpegls")
    assert "pylibjpeg" in decode_plugins("1.2.840.10008.1.2.5")  # pylibjpeg-rle
    assert decode_plugins("1.2.840.10008.1.2.4.100") == ()  # MPEG-2: no decoder installed


def test_twelve_bit_jpeg_extended_decodes():
    """Pillow alone cannot (standards.md 5.2); pylibjpeg-libjpeg can."""
    assert _pixel_codes("JPGExtended.dcm") == []
    assert dcmread(get_testdata_file("JPGExtended.dcm")).BitsStored == 12


def test_broken_jpeg_stream_is_undecodable_but_only_a_decode_finds_it():
    """JPEG-lossy.dcm has a misplaced marker inside the entropy-coded data (pydicom's README)."""
    assert _pixel_codes("JPEG-lossy.dcm") == ["pixel_data_undecodable"]
    assert _pixel_codes("JPEG-lossy.dcm", DecodeMode.FIRST_FRAME) == ["pixel_data_undecodable"]
    assert _pixel_codes("JPEG-lossy.dcm", DecodeMode.HEADERS) == []


def test_jpeg2000_sign_contradicting_pixel_representation_is_flagged():
    assert _pixel_codes("J2K_pixelrep_mismatch.dcm") == ["pixel_attributes_inconsistent"]


def test_excess_native_padding_is_a_length_mismatch():
    assert _pixel_codes("MR_small_padded.dcm") == ["pixel_length_mismatch"]


def test_codestream_headers_of_fixtures():
    ds = dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    from pydicom.encaps import generate_frames

    [frame] = generate_frames(ds.PixelData, number_of_frames=1)
    header = read_header(str(ds.file_meta.TransferSyntaxUID), frame)
    assert (header.rows, header.columns, header.samples, header.precision) == (100, 100, 3, 8)
    assert header.complete
    assert not read_header("1.2.840.10008.1.2.4.50", frame[: len(frame) // 2]).complete
    rle = dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    frames = list(generate_frames(rle.PixelData, number_of_frames=2))
    assert [rle_segment_count(f) for f in frames] == [3, 3]


@pytest.mark.parametrize(
    "syntax, data",
    [
        ("1.2.840.10008.1.2.4.50", b"not a jpeg"),
        ("1.2.840.10008.1.2.4.50", b"\xff\xd8\xff\xda\x00\x02"),
        ("1.2.840.10008.1.2.4.90", b"\xff\x4f\xff\x51\x00"),
        ("1.2.840.10008.1.2.4.90", b"\x00\x00\x00\x0cjP  \r\n\x87\n\x00\x00\x00\x08ftyp"),
    ],
)
def test_malformed_headers_raise_codestream_error(syntax, data):
    with pytest.raises(CodestreamError):
        read_header(syntax, data)


@pytest.mark.parametrize("data", [b"", b"\x00" * 10, b"\x10" + b"\x00" * 63, b"\x01" + b"\x00" * 63])
def test_malformed_rle_headers_raise(data):
    with pytest.raises(CodestreamError):
        rle_segment_count(data)


def test_first_frame_mode_decodes_one_frame_only():
    policy = ValidationPolicy(decode=DecodeMode.FIRST_FRAME)
    ds = dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    assert Validator(policy).check_instance(ds) == []


def test_per_frame_functional_groups_must_match_the_frame_count():
    """liver_1frame.dcm (an enhanced SEG cut down to one frame) keeps three Per-Frame
    Functional Groups items and no Number of Frames."""
    ds = dcmread(get_testdata_file("liver_1frame.dcm"))
    assert [i.code for i in Validator().check_instance(ds)] == ["missing_attribute"]
    del ds.PerFrameFunctionalGroupsSequence[1:]
    ds.NumberOfFrames = 1
    assert Validator().check_instance(ds) == []
    ds.PerFrameFunctionalGroupsSequence.append(ds.PerFrameFunctionalGroupsSequence[0])
    assert [i.code for i in Validator().check_instance(ds)] == ["frame_count_mismatch"]


def test_decode_frames_gives_every_frame_or_the_ones_asked_for():
    ds = dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    assert decode_frames(ds).shape == (2, 100, 100, 3)
    [second] = decode_frames(ds, [1])
    np.testing.assert_array_equal(second, decode_frames(ds)[1])
    native = dcmread(get_testdata_file("MR_small.dcm"))
    np.testing.assert_array_equal(decode_frames(native)[0], native.pixel_array)


def test_decode_frames_names_every_plugin_that_failed():
    ds = dcmread(get_testdata_file("JPEG-lossy.dcm"))
    ts = str(ds.file_meta.TransferSyntaxUID)
    with pytest.raises(RejectedInput, match="does not decode as JPEG Extended") as exc:
        decode_frames(ds)
    plugins = decode_plugins(ts)
    assert len(plugins) >= 2  # pylibjpeg fails first, then the next plugin is tried
    where = [exc.value.reason.index(f"{plugin}: ") for plugin in plugins]
    assert where == sorted(where)
    assert exc.value.subject == str(ds.SOPInstanceUID)


def test_decode_frames_refuses_a_missing_or_undecodable_syntax():
    ds = dcmread(get_testdata_file("MR_small.dcm"))
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(RejectedInput, match=r"TransferSyntaxUID \(0002,0010\): missing"):
        decode_frames(ds)
    with pytest.raises(RejectedInput, match="has no installed decoder"):
        decode_frames(ds, transfer_syntax_uid="1.2.840.10008.1.2.4.100")  # MPEG-2


def test_a_decoder_panic_is_a_plugin_failure_not_a_crash() -> None:
    """pylibjpeg-rle panics (pyo3 ``PanicException``, a BaseException) on an RLE frame whose
    Columns are fewer than its segments hold; found by fuzzing the validator (issue 14). The
    panic is that plugin's failure: the next one (pydicom's) is tried, and nothing escapes."""
    ds = ct(seed=3, n=1)[0]
    ds.compress(RLELossless)
    put(ds, "Columns", 2)
    buffer = BytesIO()
    write(ds, buffer)
    ds = dcmread(BytesIO(buffer.getvalue()))
    with pytest.warns(UserWarning, match="non-conformant padding"):  # pydicom's RLE decoder
        frames = decode_frames(ds, transfer_syntax_uid=RLELossless)
    assert frames.shape == (1, 32, 2)
    assert Validator().check_instance(ds, str(ds.file_meta.TransferSyntaxUID)) == []
