"""Validation, serving and training's held-out evaluation decode Pixel Data through one function.

``core.pixels.decode_frames`` holds the one plugin order. A spy in its place records every call:
a path that decodes some other way (``ds.pixel_array``, its own plugin loop) records nothing and
fails here.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

import core.pixels
from core._elements import Attributes
from core.config import FindingSpec, ModelEntry, ModelInputSpec
from core.pixels import DecodeMode, check_pixels
from core.records import InferenceRequest
from models.networks import build_network
from models.predictor import ChestXrayPredictor
from models.preprocessing import radiograph_to_array
from models.volumes import assemble_volumes
from synthetic.synthetic_dicom import make_cxr_study
from synthetic.synthetic_series import make_volume_series
from tests.unit.models.conftest import cxr_entry
from training.training import train_demo


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SOP Instance UID of every data set ``core.pixels.decode_frames`` decodes."""
    calls: list[str] = []
    real = core.pixels.decode_frames

    def spy(ds: Dataset, *args: object, **kwargs: object) -> np.ndarray:
        calls.append(str(ds.SOPInstanceUID))
        return real(ds, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(core.pixels, "decode_frames", spy)
    return calls


def _part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_the_validator_decodes_through_it(decoded: list[str]) -> None:
    ds = dcmread(get_testdata_file("MR_small_RLE.dcm"))
    assert check_pixels(Attributes(ds), str(ds.file_meta.TransferSyntaxUID), DecodeMode.ALL_FRAMES) == []
    assert decoded == [str(ds.SOPInstanceUID)]


def test_serving_decodes_radiographs_and_volumes_through_it(decoded: list[str], tmp_path: Path) -> None:
    [dx] = make_cxr_study(5, frozenset({"nodule"}), size=96)
    entry = cxr_entry(tmp_path / "unused.pt")
    predictor = ChestXrayPredictor(entry, build_network("chest_xray", entry))
    predictor.prepare(InferenceRequest("1.2.3", "chest_xray", ((str(dx.SOPInstanceUID), _part10(dx)),)))
    radiograph_to_array(_part10(dx), (64, 64))
    series = make_volume_series(
        np.zeros((3, 16, 16)),
        modality="CT",
        spacing=(2.0, 1.0, 1.0),
        seed=7,
        body_part="HEAD",
        series_description="unit",
    )
    assemble_volumes([dcmread(BytesIO(_part10(ds))) for ds in series])
    assert decoded == [str(dx.SOPInstanceUID)] * 2 + [str(ds.SOPInstanceUID) for ds in series]


def test_training_evaluates_held_out_radiographs_through_it(decoded: list[str], tmp_path: Path) -> None:
    out = tmp_path / "cxr.pt"
    train_demo("chest_xray", cxr_entry(out), out, steps=1, batch_size=2, log=lambda _: None, eval_size=3)
    assert len(decoded) == 3  # the training batches are arrays; each held-out image is a DICOM file


def test_training_evaluates_held_out_volumes_through_it(decoded: list[str], tmp_path: Path) -> None:
    out = tmp_path / "brain.pt"
    entry = ModelEntry(
        name="brain",
        version="0-test",
        weights=str(out),
        demo=True,
        input=ModelInputSpec(spatial_size=(16, 24, 24)),
        findings=(FindingSpec(key="brain_tumour"),),
    )
    torch.manual_seed(0)
    train_demo("brain_mri_tumour", entry, out, steps=1, batch_size=2, log=lambda _: None, eval_size=2)
    assert len(decoded) >= 2 and len(set(decoded)) == len(decoded)  # every slice of both studies, once
