"""Key images and their KOS for viewers without Parametric Maps (core.key_images)."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from core.key_images import BANNER, KeyImageFinding, key_image, key_object_selection, render_overlay

WHEN = datetime(2026, 12, 6, 11, 0, 0)


@pytest.fixture(scope="module")
def source():
    return dcmread(get_testdata_file("CT_small.dcm"))


def _finding(source, key="nodule", heat=True):
    rows, cols = int(source.Rows), int(source.Columns)
    yy, xx = np.mgrid[0:rows, 0:cols]
    blob = np.exp(-((yy - 40) ** 2 + (xx - 30) ** 2) / 50.0) if heat else None
    outline = ((20.0, 30.0), (40.0, 30.0), (40.0, 50.0), (20.0, 50.0), (20.0, 30.0))
    return KeyImageFinding(key, "Nodule", 0.87, "cxr-net 1.0.0", heat=blob, outline=outline)


def _roundtrip(ds):
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return dcmread(buf)


def test_the_key_image_burns_in_the_warning_heatmap_and_outline(source) -> None:
    plain = render_overlay(source, KeyImageFinding("nodule", "Nodule", 0.87, "m", heat=None))
    marked = render_overlay(source, _finding(source))
    banner = marked.shape[0] - int(source.Rows)
    assert marked.shape[1:] == (source.Columns, 3) and marked.dtype == np.uint8 and banner > 20
    top = plain[:banner]
    yellow = (top[..., 0] > 100) & (top[..., 1] > 100) & (top[..., 2] < 40)
    assert (top == 0).all(axis=-1).mean() > 0.5 and yellow.sum() > 50  # black banner, yellow text
    heat_here = marked[banner + 40, 30].astype(int) - plain[banner + 40, 30].astype(int)
    assert heat_here[0] > 0 and heat_here[2] <= 0  # reddened where the heatmap peaks
    assert (marked[banner + 30, 20:41, 1] == 255).all()  # the outline's top edge is drawn
    assert (plain[banner:, :, 0] == plain[banner:, :, 2]).all()  # no heat, no outline: the frame as it was


def test_the_secondary_capture_says_what_it_is_and_where_it_came_from(source) -> None:
    sc = _roundtrip(key_image(source, _finding(source), "PACS-AI Bridge", 9901, WHEN))
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.BurnedInAnnotation == "YES"
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"] and "not for diagnosis" in sc.SeriesDescription
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.PatientID == source.PatientID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert BANNER == "AI RESULT - NOT FOR DIAGNOSIS"
    again = key_image(source, _finding(source), "PACS-AI Bridge", 9901, WHEN)
    other = key_image(source, _finding(source, key="mass"), "PACS-AI Bridge", 9901, WHEN)
    assert again.SOPInstanceUID == sc.SOPInstanceUID != other.SOPInstanceUID  # idempotent per finding


def test_the_kos_points_at_the_key_images_of_one_result(source) -> None:
    images = [key_image(source, _finding(source, k), "PACS-AI Bridge", 9901, WHEN) for k in ("nodule", "mass")]
    kos = _roundtrip(key_object_selection(images, "cxr-net 1.0.0", "PACS-AI Bridge", 9902, WHEN))
    assert kos.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113000"
    evidence = kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert sorted(r.ReferencedSOPInstanceUID for r in evidence) == sorted(i.SOPInstanceUID for i in images)
    assert key_object_selection(images[::-1], "cxr-net 1.0.0", "m", 9902, WHEN).SOPInstanceUID == kos.SOPInstanceUID
    with pytest.raises(ValueError, match="empty"):
        key_object_selection([], "m", "m", 1, WHEN)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_key_image_and_kos_pass_dciodvfy(source, tmp_path: Path) -> None:
    sc = key_image(source, _finding(source), "PACS-AI Bridge", 9901, WHEN)
    kos = key_object_selection([sc], "cxr-net 1.0.0", "PACS-AI Bridge", 9902, WHEN)
    for name, ds in (("sc", sc), ("kos", kos)):
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        result = subprocess.run(
            ["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        output = result.stdout + result.stderr
        assert not [line for line in output.splitlines() if line.startswith("Error")], (name, output)
