"""Image-quality flags come from measurements: missing slices and slice-to-slice motion."""

from __future__ import annotations

import numpy as np

from models.quality import MOTION_THRESHOLD, motion_score, volume_flags
from models.volumes import assemble_volumes
from synthetic.synthetic_studies import head_ct_study


def test_a_still_head_with_a_one_slice_bleed_raises_no_flag() -> None:
    study = head_ct_study(5, {12: ["intraparenchymal"]}, n_slices=24)
    [volume] = assemble_volumes(study.datasets)
    assert volume_flags(volume) == []
    assert motion_score(volume) < MOTION_THRESHOLD


def test_patient_motion_between_slices_is_flagged() -> None:
    study = head_ct_study(5, n_slices=24)
    [volume] = assemble_volumes(study.datasets)
    volume.array[12:] = np.roll(volume.array[12:], 6, axis=2)  # the head moved sideways
    [flag] = volume_flags(volume)
    assert flag.key == "motion_artefact" and flag.score > MOTION_THRESHOLD
    assert flag.series_instance_uid == str(study.datasets[0].SeriesInstanceUID)


def test_missing_slices_are_an_incomplete_series() -> None:
    study = head_ct_study(6, n_slices=24)
    [volume] = assemble_volumes(study.datasets[:10] + study.datasets[13:])
    flags = {f.key: f for f in volume_flags(volume)}
    assert set(flags) == {"incomplete_series"}
    assert flags["incomplete_series"].score == 3.0
    assert "3 of 24 slices missing" in flags["incomplete_series"].detail
