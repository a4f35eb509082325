"""Heatmaps become Parametric Maps on the source's own grid, in its frame of reference."""

from __future__ import annotations

from io import BytesIO

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from core.findings import term_for
from core.parametric_maps import ParametricMapBuilder, decode_heatmap, encode_heatmap, plane_on_source
from core.sr import SRIdentity
from core.types import Finding, Prediction
from synthetic.synthetic_series import make_radiograph_study, make_volume_series

IDENTITY = SRIdentity("PACS-AI Bridge", 9900)


def _ct(n: int = 6) -> list:
    values = np.zeros((n, 32, 40))
    return make_volume_series(values, modality="CT", spacing=(3.0, 0.5, 0.5), seed=3,
                              body_part="HEAD", series_description="CT HEAD")


def _prediction(sources: list, heatmaps: dict, key: str = "any_haemorrhage") -> Prediction:
    finding = Finding(key, term_for(key), 0.9, 0.5, critical=True)
    return Prediction("head_ct_haemorrhage", "ich", "1-demo", (finding,),
                      tuple(str(s.SOPInstanceUID) for s in sources), True, {"heatmaps": heatmaps})


def _read(pm: hd.pm.ParametricMap) -> object:
    buffer = BytesIO()
    pm.save_as(buffer, enforce_file_format=True)
    return dcmread(BytesIO(buffer.getvalue()))


def test_encoding_round_trips_to_sixteen_bits() -> None:
    heat = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    assert np.abs(decode_heatmap(encode_heatmap(heat)) - heat).max() < 1e-4
    with pytest.raises(ValueError, match="bytes"):
        decode_heatmap({**encode_heatmap(heat), "shape": [2, 2]})


def test_a_plane_map_lands_on_the_source_pixel_grid() -> None:
    heat = np.zeros((8, 8))
    heat[2, 5] = 1.0  # network pixel (2, 5) of an 8x8 grid over a 32x32 frame
    payload = {**encode_heatmap(heat), "rows": 32, "columns": 32,
               "row_map": [4.0, 1.5], "column_map": [4.0, 1.5]}
    on_source = plane_on_source(payload)
    assert on_source.shape == (32, 32)
    assert np.unravel_index(int(on_source.argmax()), on_source.shape) in {(9, 21), (9, 22), (10, 21), (10, 22)}


def test_ct_slice_map_sits_at_that_slice_in_the_source_frame_of_reference() -> None:
    sources = _ct()
    target = sources[4]
    heat = np.zeros((16, 20))
    heat[8, 10] = 1.0
    geometry = {"position": [float(v) for v in target.ImagePositionPatient],
                "orientation": [1.0, 0, 0, 0, 1.0, 0], "pixel_spacing": [0.5, 0.5],
                "slice_thickness": 3.0, "frame_of_reference_uid": str(target.FrameOfReferenceUID)}
    payload = {"kind": "plane", "ref": {"sop_instance_uid": str(target.SOPInstanceUID)},
               "rows": 32, "columns": 40, "row_map": [2.0, 0.5], "column_map": [2.0, 0.5],
               "geometry": geometry, **encode_heatmap(heat)}
    pm = _read(ParametricMapBuilder(IDENTITY).build(sources, _prediction(sources, {"any_haemorrhage": payload}), "any_haemorrhage"))
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30" and (pm.Rows, pm.Columns) == (32, 40)
    assert pm.FrameOfReferenceUID == target.FrameOfReferenceUID
    frame = pm.PerFrameFunctionalGroupsSequence[0]
    assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == pytest.approx(
        [float(v) for v in target.ImagePositionPatient])
    assert pm.StudyInstanceUID == target.StudyInstanceUID
    refs = {r.ReferencedSOPInstanceUID for s in pm.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert refs == {target.SOPInstanceUID}
    assert "DEMO" in pm.SeriesDescription and pm.ContentLabel == "GRADCAM"


def test_volume_map_is_written_on_the_network_grid_with_its_affine() -> None:
    sources = _ct()
    affine = np.array([[0, 0, 1.0, -10], [0, 1.0, 0, -8], [-6.0, 0, 0, 0], [0, 0, 0, 1]])
    payload = {"kind": "volume", "affine": affine.tolist(),
               "frame_of_reference_uid": str(sources[0].FrameOfReferenceUID),
               **encode_heatmap(np.random.default_rng(1).random((3, 16, 20)))}
    pm = _read(ParametricMapBuilder(IDENTITY).build(sources, _prediction(sources, {"x": payload}, "x"), "x"))
    assert pm.NumberOfFrames == 3 and (pm.Rows, pm.Columns) == (16, 20)
    assert pm.FrameOfReferenceUID == sources[0].FrameOfReferenceUID


def test_projection_radiograph_map_gets_its_own_frame_of_reference() -> None:
    [source] = make_radiograph_study([np.random.default_rng(2).random((48, 48))], seed=4,
                                     body_part="FOREARM", region=("14975008", "Forearm"))
    payload = {"kind": "plane", "ref": {"sop_instance_uid": str(source.SOPInstanceUID)},
               "rows": 48, "columns": 48, "row_map": [1.0, 0.0], "column_map": [1.0, 0.0],
               "geometry": None, **encode_heatmap(np.eye(48))}
    prediction = _prediction([source], {"limb_fracture": payload}, "limb_fracture")
    builder = ParametricMapBuilder(IDENTITY)
    pm = _read(builder.build([source], prediction, "limb_fracture"))
    again = _read(builder.build([source], prediction, "limb_fracture"))
    assert "FrameOfReferenceUID" not in source and pm.FrameOfReferenceUID  # its own
    assert pm.SOPInstanceUID == again.SOPInstanceUID  # deterministic, so re-sends are duplicates
    assert pm.Laterality == "L"  # a limb is a paired body part
    assert np.allclose(pm.pixel_array, np.eye(48), atol=1e-4)


def test_a_heatmap_of_an_unknown_instance_is_refused() -> None:
    sources = _ct(2)
    payload = {"kind": "plane", "ref": {"sop_instance_uid": "1.2.3"}, **encode_heatmap(np.ones((2, 2)))}
    with pytest.raises(ValueError, match="not in the 2 sources"):
        ParametricMapBuilder(IDENTITY).build(sources, _prediction(sources, {"k": payload}, "k"), "k")
    with pytest.raises(ValueError, match="no heatmap"):
        ParametricMapBuilder(IDENTITY).build(sources, _prediction(sources, {}, "k"), "k")
