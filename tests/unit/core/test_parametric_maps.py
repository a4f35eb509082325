"""Heatmaps become Parametric Maps on the source's own grid, in its frame of reference."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from io import BytesIO

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from core.findings import term_for
from core.parametric_maps import ParametricMapBuilder, decode_levels, encode_levels, plane_on_source
from core.records import (
    AxisScale,
    BlobRef,
    Finding,
    FrameRef,
    HeatmapRef,
    PlaneGeometry,
    PlaneGrid,
    Prediction,
    VolumeGrid,
)
from core.sr import SRIdentity
from synthetic.synthetic_series import make_radiograph_study, make_volume_series

IDENTITY = SRIdentity("PACS-AI Bridge", 9900)


def _ct(n: int = 6) -> list:
    values = np.zeros((n, 32, 40))
    return make_volume_series(
        values, modality="CT", spacing=(3.0, 0.5, 0.5), seed=3, body_part="HEAD", series_description="CT HEAD"
    )


BLOB = BlobRef("0" * 64, 0)


def _prediction(sources: list, key: str = "any_haemorrhage") -> Prediction:
    finding = Finding(key, term_for(key), 0.9, 0.5, critical=True)
    return Prediction(
        "head_ct_haemorrhage", "ich", "1-demo", (finding,), tuple(str(s.SOPInstanceUID) for s in sources), True
    )


def _frame(source: object) -> FrameRef:
    return FrameRef(str(source.SOPInstanceUID), str(source.SOPClassUID))  # type: ignore[attr-defined]


def _read(pm: hd.pm.ParametricMap) -> object:
    buffer = BytesIO()
    pm.save_as(buffer, enforce_file_format=True)
    return dcmread(BytesIO(buffer.getvalue()))


def test_encoding_round_trips_to_sixteen_bits() -> None:
    heat = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    assert np.abs(decode_levels(encode_levels(heat), heat.shape) - heat).max() < 1e-4
    with pytest.raises(ValueError, match="bytes"):
        decode_levels(encode_levels(heat), (2, 2))


def test_a_plane_map_lands_on_the_source_pixel_grid() -> None:
    heat = np.zeros((8, 8))
    heat[2, 5] = 1.0  # network pixel (2, 5) of an 8x8 grid over a 32x32 frame
    grid = PlaneGrid(FrameRef("1.2", "1.3"), 32, 32, AxisScale(4.0, 1.5), AxisScale(4.0, 1.5))
    on_source = plane_on_source(grid, heat)
    assert on_source.shape == (32, 32)
    assert np.unravel_index(int(on_source.argmax()), on_source.shape) in {(9, 21), (9, 22), (10, 21), (10, 22)}


def test_ct_slice_map_sits_at_that_slice_in_the_source_frame_of_reference() -> None:
    sources = _ct()
    target = sources[4]
    heat = np.zeros((16, 20))
    heat[8, 10] = 1.0
    geometry = PlaneGeometry(
        tuple(float(v) for v in target.ImagePositionPatient),  # type: ignore[arg-type]
        (1.0, 0, 0, 0, 1.0, 0),
        (0.5, 0.5),
        3.0,
        str(target.FrameOfReferenceUID),
    )
    grid = PlaneGrid(_frame(target), 32, 40, AxisScale(2.0, 0.5), AxisScale(2.0, 0.5), geometry)
    ref = HeatmapRef("any_haemorrhage", grid, heat.shape, BLOB)
    pm = _read(ParametricMapBuilder(IDENTITY).build(sources, _prediction(sources), ref, heat))
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30" and (pm.Rows, pm.Columns) == (32, 40)
    assert pm.FrameOfReferenceUID == target.FrameOfReferenceUID
    frame = pm.PerFrameFunctionalGroupsSequence[0]
    assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == pytest.approx(
        [float(v) for v in target.ImagePositionPatient]
    )
    assert pm.StudyInstanceUID == target.StudyInstanceUID
    refs = {r.ReferencedSOPInstanceUID for s in pm.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert refs == {target.SOPInstanceUID}
    assert "DEMO" in pm.SeriesDescription and pm.ContentLabel == "GRADCAM"


def test_volume_map_is_written_on_the_network_grid_with_its_affine() -> None:
    sources = _ct()
    affine = ((0, 0, 1.0, -10), (0, 1.0, 0, -8), (-6.0, 0, 0, 0), (0, 0, 0, 1))
    grid = VolumeGrid(affine, str(sources[0].FrameOfReferenceUID))
    heat = np.random.default_rng(1).random((3, 16, 20)).astype(np.float32)
    ref = HeatmapRef("x", grid, heat.shape, BLOB)
    pm = _read(ParametricMapBuilder(IDENTITY).build(sources, _prediction(sources, "x"), ref, heat))
    assert pm.NumberOfFrames == 3 and (pm.Rows, pm.Columns) == (16, 20)
    assert pm.FrameOfReferenceUID == sources[0].FrameOfReferenceUID


def test_projection_radiograph_map_gets_its_own_frame_of_reference() -> None:
    [source] = make_radiograph_study(
        [np.random.default_rng(2).random((48, 48))], seed=4, body_part="FOREARM", region=("14975008", "Forearm")
    )
    grid = PlaneGrid(_frame(source), 48, 48, AxisScale(1.0, 0.0), AxisScale(1.0, 0.0), None)
    heat = decode_levels(encode_levels(np.eye(48)), (48, 48))
    ref = HeatmapRef("limb_fracture", grid, (48, 48), BLOB)
    prediction = _prediction([source], "limb_fracture")
    builder = ParametricMapBuilder(IDENTITY)
    pm = _read(builder.build([source], prediction, ref, heat))
    again = _read(builder.build([source], prediction, ref, heat))
    assert "FrameOfReferenceUID" not in source and pm.FrameOfReferenceUID  # its own
    assert pm.SOPInstanceUID == again.SOPInstanceUID  # deterministic, so re-sends are duplicates
    assert pm.Laterality == "L"  # a limb is a paired body part
    assert np.allclose(pm.pixel_array, np.eye(48), atol=1e-4)


def test_a_heatmap_of_an_unknown_instance_is_refused() -> None:
    sources = _ct(2)
    grid = PlaneGrid(FrameRef("1.2.3", "1.2"), 2, 2, AxisScale(1.0, 0.0), AxisScale(1.0, 0.0))
    ref = HeatmapRef("k", grid, (2, 2), BLOB)
    with pytest.raises(ValueError, match="not in the 2 sources"):
        ParametricMapBuilder(IDENTITY).build(sources, _prediction(sources, "k"), ref, np.ones((2, 2)))


def test_the_same_input_at_the_same_job_time_gives_a_byte_identical_map() -> None:
    [source] = make_radiograph_study(
        [np.random.default_rng(5).random((32, 32))], seed=6, body_part="FOREARM", region=("14975008", "Forearm")
    )
    grid = PlaneGrid(_frame(source), 32, 32, AxisScale(1.0, 0.0), AxisScale(1.0, 0.0), None)
    ref = HeatmapRef("a", grid, (32, 32), BLOB)
    heat = np.random.default_rng(7).random((32, 32)).astype(np.float32)
    when = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    builder = ParametricMapBuilder(IDENTITY)
    first = _bytes(builder.build([source], _prediction([source], "a"), ref, heat, when))
    time.sleep(1.1)  # a wall-clock stamp would differ now
    assert _bytes(builder.build([source], _prediction([source], "a"), ref, heat, when)) == first


def _bytes(pm: hd.pm.ParametricMap) -> bytes:
    buffer = BytesIO()
    pm.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
