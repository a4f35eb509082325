"""Synthetic DICOM is valid (dciodvfy), round-trips through files and is deterministic."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset
from pydicom.uid import ExplicitVRLittleEndian

from synthetic.synthetic_dicom import (
    CXR_SOP_CLASSES,
    make_ct_series,
    make_cxr_study,
    save_study,
    synthetic_uid,
)

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _roundtrip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buffer.getvalue()))


def test_dx_study_has_the_iod_attributes_after_a_roundtrip() -> None:
    study = make_cxr_study(1, frozenset({"nodule"}), n_images=2, size=128)
    assert len(study) == 2
    ds = _roundtrip(study[0])
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == DX_FOR_PRESENTATION == CXR_SOP_CLASSES["DX"]
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert (ds.Modality, ds.PresentationIntentType) == ("DX", "FOR PRESENTATION")
    assert (ds.BodyPartExamined, ds.ViewPosition) == ("CHEST", "PA")
    assert (ds.SamplesPerPixel, ds.PhotometricInterpretation) == (1, "MONOCHROME2")
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert (ds.Rows, ds.Columns) == (128, 128)
    assert ds.PixelSpacing == ds.ImagerPixelSpacing
    assert ds.pixel_array.max() <= 4095 and ds.pixel_array.dtype == np.uint16
    assert ds.StudyInstanceUID == study[1].StudyInstanceUID
    assert ds.SeriesInstanceUID == study[1].SeriesInstanceUID
    assert ds.SOPInstanceUID != study[1].SOPInstanceUID
    assert "nodule" in ds.ImageComments


def test_cr_study_uses_the_cr_sop_class() -> None:
    ds = _roundtrip(make_cxr_study(2, modality="CR", size=64)[0])
    assert (ds.SOPClassUID, ds.Modality) == (CR_IMAGE, "CR")


def test_uids_are_deterministic_unless_given() -> None:
    a, b = make_cxr_study(5, size=64)[0], make_cxr_study(5, size=64)[0]
    assert (a.StudyInstanceUID, a.SOPInstanceUID) == (b.StudyInstanceUID, b.SOPInstanceUID)
    assert make_cxr_study(6, size=64)[0].StudyInstanceUID != a.StudyInstanceUID
    given = make_cxr_study(5, size=64, study_uid="1.2.3.4")[0]
    assert given.StudyInstanceUID == "1.2.3.4"
    assert all(len(uid) <= 64 for uid in (a.StudyInstanceUID, a.SOPInstanceUID))
    assert synthetic_uid("x", 1) == synthetic_uid("x", 1) != synthetic_uid("x", 2)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="modality"):
        make_cxr_study(0, modality="MR")
    with pytest.raises(ValueError, match="n_images"):
        make_cxr_study(0, n_images=0)
    with pytest.raises(ValueError, match="n_slices"):
        make_ct_series(0, 0)


def test_ct_series_geometry_and_hounsfield_units() -> None:
    series = make_ct_series(3, 4, rows=64, cols=64, slice_thickness=2.5)
    assert len({ds.SeriesInstanceUID for ds in series}) == 1
    assert len({ds.SOPInstanceUID for ds in series}) == 4
    z = [float(ds.ImagePositionPatient[2]) for ds in series]
    assert np.allclose(np.diff(z), -2.5)
    ds = _roundtrip(series[0])
    assert ds.SOPClassUID == CT_IMAGE
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert ds.FrameOfReferenceUID == series[3].FrameOfReferenceUID
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert -1100 < hu[0, 0] < -900  # air in the corner
    assert 0 < hu[32, 5:60].max()  # soft tissue or bone on the centre row
    assert not np.array_equal(series[0].PixelData, series[1].PixelData)


def test_save_study_writes_part10_files(tmp_path: Path) -> None:
    paths = save_study(make_cxr_study(1, n_images=2, size=64), tmp_path / "study")
    assert len(paths) == 2 and all(p.parent == tmp_path / "study" for p in paths)
    for path in paths:
        assert path.read_bytes()[128:132] == b"DICM"
        assert pydicom.dcmread(path).SOPInstanceUID == path.stem


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize(
    "datasets",
    [
        pytest.param(lambda: make_cxr_study(1, frozenset({"mass"}), size=128), id="DX"),
        pytest.param(lambda: make_cxr_study(2, modality="CR", size=128), id="CR"),
        pytest.param(lambda: make_ct_series(3, 1, rows=64, cols=64), id="CT"),
    ],
)
def test_dciodvfy_reports_no_errors(datasets: Callable[[], list[FileDataset]], tmp_path: Path) -> None:
    (path,) = save_study(datasets()[:1], tmp_path)
    result = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60, check=False)
    output = result.stdout + result.stderr
    assert not [line for line in output.splitlines() if "Error" in line], output
