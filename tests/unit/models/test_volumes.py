"""Volumes come from every frame, ordered by position along the slice normal, never by number."""

from __future__ import annotations

import random
from io import BytesIO

import numpy as np
import pydicom
import pytest

from core.errors import ModelError
from models.volumes import assemble_volumes, planes_of
from synthetic.synthetic_series import LOSSLESS_SYNTAXES, encode, make_volume_series, to_enhanced


def _values(n: int = 10) -> np.ndarray:
    rng = np.random.default_rng(0)
    values = rng.normal(0.0, 20.0, (n, 48, 40)).round()
    for k in range(n):
        values[k, 2:6, 3:9] = 100 * k  # each slice is recognisable
    return values


def _series(values: np.ndarray, **kw: object) -> list[pydicom.Dataset]:
    return make_volume_series(
        values,
        modality="CT",
        spacing=(2.5, 0.8, 0.9),
        seed=1,
        body_part="HEAD",
        series_description="CT HEAD",
        **kw,  # type: ignore[arg-type]
    )


def _reread(ds: pydicom.Dataset, syntax: str = LOSSLESS_SYNTAXES[1]) -> pydicom.Dataset:
    return pydicom.dcmread(BytesIO(encode(ds, syntax)))


def test_shuffled_series_with_misleading_instance_numbers_is_ordered_by_position() -> None:
    values = _values()
    datasets = _series(values, instance_numbers=[3, 9, 1, 10, 2, 8, 4, 7, 5, 6])
    shuffled = datasets[:]
    random.Random(4).shuffle(shuffled)
    [volume] = assemble_volumes(shuffled)
    assert np.array_equal(volume.array, values.astype(np.float32))
    assert [f.sop_instance_uid for f in volume.frames] == [str(d.SOPInstanceUID) for d in datasets]
    assert volume.spacing == pytest.approx((2.5, 0.8, 0.9))
    for k, ds in enumerate(datasets):  # the affine puts each slice where its header says
        assert volume.to_patient(np.array([k, 0, 0])) == pytest.approx(ds.ImagePositionPatient)


def test_enhanced_multiframe_with_shuffled_frames_gives_the_same_volume() -> None:
    values = _values()
    datasets = _series(values)
    order = [7, 2, 9, 0, 4, 1, 8, 3, 6, 5]
    enhanced = _reread(to_enhanced(datasets, frame_order=order))
    assert enhanced.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.2"  # Legacy Converted Enhanced CT
    [volume] = assemble_volumes([enhanced])
    [single] = assemble_volumes(datasets)
    assert np.array_equal(volume.array, single.array)
    assert np.allclose(volume.affine, single.affine)
    # slice k is stored as frame order.index(k) + 1: the reference names that frame
    assert [f.frame_number for f in volume.frames] == [order.index(k) + 1 for k in range(10)]
    assert {f.sop_instance_uid for f in volume.frames} == {str(enhanced.SOPInstanceUID)}


def test_missing_slices_are_filled_from_a_neighbour_and_reported() -> None:
    datasets = _series(_values())
    [volume] = assemble_volumes(datasets[:4] + datasets[6:])
    assert volume.array.shape[0] == 10 and volume.missing == (4, 5)
    assert volume.frames[4] is None
    assert volume.nearest_frame(4).sop_instance_uid == str(datasets[3].SOPInstanceUID)


@pytest.mark.parametrize("syntax", LOSSLESS_SYNTAXES)
def test_every_lossless_transfer_syntax_decodes_to_identical_values(syntax: str) -> None:
    values = _values(3)
    datasets = _series(values)
    [reference] = assemble_volumes(datasets)
    [volume] = assemble_volumes([_reread(ds, syntax) for ds in datasets])
    assert np.array_equal(volume.array, reference.array)


def test_rescale_slope_intercept_and_monochrome1_are_applied() -> None:
    ds = _series(_values(1))[0]
    stored = ds.pixel_array.astype(np.float64)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    [plane] = planes_of(_reread(ds))
    assert np.array_equal(plane.pixels, stored * 2 - 100)
    ds.PhotometricInterpretation = "MONOCHROME1"
    [inverted] = planes_of(_reread(ds))
    assert np.array_equal(inverted.pixels, -(stored * 2 - 100))


def test_two_series_give_two_volumes_and_colour_is_refused() -> None:
    first = _series(_values(3))
    second = make_volume_series(
        _values(4), modality="CT", spacing=(5.0, 1.0, 1.0), seed=2, body_part="HEAD", series_description="CT HEAD BONE"
    )
    volumes = assemble_volumes(first + second)
    assert sorted(v.array.shape[0] for v in volumes) == [3, 4]
    colour = first[0]
    colour.SamplesPerPixel, colour.PhotometricInterpretation = 3, "RGB"
    with pytest.raises(ModelError, match="SamplesPerPixel"):
        planes_of(colour)


def test_duplicate_positions_are_a_model_error_naming_the_series() -> None:
    datasets = _series(_values(4))
    datasets[2].ImagePositionPatient = datasets[1].ImagePositionPatient
    with pytest.raises(ModelError, match="regular stack"):
        assemble_volumes(datasets)
