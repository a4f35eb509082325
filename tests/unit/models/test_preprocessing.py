"""DICOM to tensor: Modality LUT, polarity, frames, transfer syntaxes and clear errors."""

from __future__ import annotations

import copy
from io import BytesIO

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from core.errors import ModelError
from models.preprocessing import (
    grayscale_pixels,
    normalise_intensity,
    prepare_pixels,
    radiograph_to_array,
)
from synthetic.synthetic_dicom import make_cxr_study

SPATIAL = (64, 64)


def _dx(seed: int = 1, size: int = 128) -> FileDataset:
    return make_cxr_study(seed, frozenset({"mass"}), size=size)[0]


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _with_pixels(ds: FileDataset, pixels: np.ndarray) -> FileDataset:
    out = copy.deepcopy(ds)
    out.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return out


def test_output_is_float32_unit_range_at_the_model_size() -> None:
    x = radiograph_to_array(_bytes(_dx()), SPATIAL)
    assert x.dtype == np.float32 and x.shape == (1, *SPATIAL)
    assert x.min() == 0.0 and x.max() == 1.0


@pytest.mark.parametrize("spatial", [(32, 48), (256, 200)], ids=["shrink", "grow"])
def test_any_2d_size(spatial: tuple[int, int]) -> None:
    assert radiograph_to_array(_dx(size=128), spatial).shape == (1, *spatial)


def test_monochrome1_is_inverted_to_the_same_tensor() -> None:
    mono2 = _dx()
    mono1 = _with_pixels(mono2, 4095 - mono2.pixel_array.astype(np.int32))
    mono1.PhotometricInterpretation = "MONOCHROME1"
    mono1.PresentationLUTShape = "INVERSE"
    a = radiograph_to_array(_bytes(mono2), SPATIAL)
    b = radiograph_to_array(_bytes(mono1), SPATIAL)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_rescale_slope_and_intercept_are_applied() -> None:
    ds = _dx()
    stored = ds.pixel_array.astype(np.float64)
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -100
    values = grayscale_pixels(pydicom.dcmread(BytesIO(_bytes(ds))))
    np.testing.assert_array_equal(values, stored * 2 - 100)
    # The percentile window makes the network input independent of the linear rescale.
    plain = radiograph_to_array(_bytes(_dx()), SPATIAL)
    np.testing.assert_allclose(radiograph_to_array(_bytes(ds), SPATIAL), plain, atol=1e-5)


def test_rle_lossless_gives_the_identical_tensor() -> None:
    ds = _dx()
    plain = radiograph_to_array(_bytes(ds), SPATIAL)
    ds.compress(RLELossless)
    data = _bytes(ds)
    assert pydicom.dcmread(BytesIO(data)).file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(radiograph_to_array(data, SPATIAL), plain)


@pytest.mark.parametrize("syntax", [JPEGLSLossless, JPEG2000Lossless], ids=["jpegls", "j2k"])
def test_lossless_jpeg_family_gives_the_identical_tensor(syntax: pydicom.uid.UID) -> None:
    ds = _dx()
    plain = radiograph_to_array(_bytes(ds), SPATIAL)
    try:
        ds.compress(syntax)
    except (RuntimeError, NotImplementedError) as exc:
        pytest.skip(f"no encoder for {syntax.name}: {exc}")
    np.testing.assert_array_equal(radiograph_to_array(_bytes(ds), SPATIAL), plain)


def test_multiframe_uses_the_first_frame() -> None:
    ds = _dx(size=64)
    first = ds.pixel_array
    frames = np.stack([first, np.full_like(first, 7)])
    multi = _with_pixels(ds, frames)
    multi.NumberOfFrames = 2
    np.testing.assert_array_equal(radiograph_to_array(_bytes(multi), SPATIAL), radiograph_to_array(_bytes(ds), SPATIAL))


def test_not_dicom_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="expected a DICOM Part 10 file"):
        radiograph_to_array(b"\x00" * 10 + b"hello", SPATIAL)


def test_colour_is_refused_naming_the_attribute() -> None:
    ds = _dx()
    ds.SamplesPerPixel = 3
    with pytest.raises(ModelError, match=r"SamplesPerPixel \(0028,0002\) = 3; expected 1"):
        radiograph_to_array(ds, SPATIAL)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "PALETTE COLOR"
    with pytest.raises(ModelError, match="PhotometricInterpretation"):
        radiograph_to_array(ds, SPATIAL)


def test_missing_pixel_data_is_a_model_error() -> None:
    ds = _dx()
    del ds.PixelData
    with pytest.raises(ModelError, match="no Pixel Data"):
        radiograph_to_array(_bytes(ds), SPATIAL)


def test_undecodable_pixel_data_names_the_transfer_syntax() -> None:
    ds = _dx()
    ds.PixelData = ds.PixelData[:100]  # truncated
    with pytest.raises(ModelError, match="Explicit VR Little Endian"):
        radiograph_to_array(_bytes(ds), SPATIAL)


def test_blank_image_is_a_model_error() -> None:
    ds = _with_pixels(_dx(), np.full((128, 128), 1000))
    with pytest.raises(ModelError, match="without contrast"):
        radiograph_to_array(_bytes(ds), SPATIAL)


def test_normalise_intensity_is_shift_and_scale_invariant() -> None:
    values = np.random.default_rng(0).normal(size=(40, 40))
    np.testing.assert_allclose(normalise_intensity(values), normalise_intensity(values * 3 + 9), atol=1e-6)


def test_prepare_pixels_refuses_a_3d_size() -> None:
    with pytest.raises(ModelError, match=r"expected \(H, W\)"):
        prepare_pixels(np.zeros((8, 8)), (4, 8, 8))
