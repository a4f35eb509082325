"""Issue 18: the modality's own word completes the study (MPPS), and the PACS's (IAN).

A pynetdicom modality N-CREATEs its procedure step at the bridge, sends slices to the bridge
(paced, with a pause between two associations, so silence alone would complete too early),
and N-SETs the step COMPLETED listing every instance; another discontinues its step half way.
The sender's own rule is a 60 s quiet period, so only the evidence can complete these studies
within the test. Orthanc is the PACS the SRs go to. Head CTs of 20 slices (the rule does not
depend on the count; it keeps the test short).
"""

from __future__ import annotations

import time
from io import BytesIO

import highdicom as hd
import pytest
from pydicom import dcmread

from demo.modality import send_ian, send_mpps_create, send_mpps_set, send_paced
from synthetic.procedure_steps import ian_notice, mpps_n_create, mpps_n_set, mpps_uid
from synthetic.synthetic_dicom import save_study
from synthetic.synthetic_studies import head_ct_study
from tests.integration.conftest import ledger_of, needs_peers, wait_for_states

pytestmark = [pytest.mark.integration, needs_peers]

MODALITY = "CT1"


def _quality_keys(sr) -> set[str]:
    groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
    return {g.tracking_identifier.rsplit(":", 1)[-1] for g in groups if ":quality:" in g.tracking_identifier}


def _send(files, port, every_s=0.05):
    assert send_paced(files, port, "PACSAI", MODALITY, every_s) == [0] * len(files)


def test_mpps_completes_the_study_when_every_listed_instance_is_held_and_marks_a_discontinued_one(
    tmp_path, orthanc, make_pipeline
):
    pipeline, _ = make_pipeline(
        orthanc, assembly={"sources": {MODALITY: {"completion": "quiet_period", "quiet_period_s": 60}}}
    )
    ledger, port = ledger_of(pipeline), pipeline.listener_port()
    done = head_ct_study(1850, n_slices=20, patient_id="MPPS1", accession="M1").datasets
    half = head_ct_study(1851, n_slices=20, patient_id="MPPS2", accession="M2").datasets
    for study in (done, half):
        assert send_mpps_create(port, "PACSAI", MODALITY, mpps_n_create(study), mpps_uid(study)).ok
    files = save_study(done, tmp_path / "done")
    _send(files[:10], port)
    time.sleep(1.5)  # the scanner pauses between two reconstructions
    _send(files[10:], port)
    _send(save_study(half[:8], tmp_path / "half"), port)
    assert send_mpps_set(port, "PACSAI", MODALITY, mpps_n_set(done), mpps_uid(done)).ok
    stopped = mpps_n_set(half[:8], "DISCONTINUED", "Equipment failure")
    assert send_mpps_set(port, "PACSAI", MODALITY, stopped, mpps_uid(half)).ok
    uids = [str(done[0].StudyInstanceUID), str(half[0].StudyInstanceUID)]
    assert wait_for_states(ledger, uids, {"delivered"}, timeout_s=120), ledger.status.report(time.time())
    for uid, received, partial in ((uids[0], 20, False), (uids[1], 8, True)):
        [job] = ledger.jobs.for_study(uid)
        [complete] = [e.detail for e in ledger.audit.events(uid) if e.type == "study_complete"]
        assert (complete["rule"], complete["received"], complete["steps"]) == ("mpps", received, 1)
        assert job.record.completion.rule == "mpps" and job.record.completion.partial is partial
        [meta] = orthanc.instances_of_study(uid, modality="SR")
        keys = _quality_keys(dcmread(BytesIO(orthanc.file(meta["ID"]))))
        assert ("incomplete_series" in keys) is partial  # a partial result says so in its SR
    assert [e.detail["status"] for e in ledger.audit.events(uids[1]) if e.type == "mpps_received"] == [
        "IN PROGRESS",
        "DISCONTINUED",
    ]


def test_an_availability_notification_completes_the_study_when_we_hold_what_it_lists(tmp_path, orthanc, make_pipeline):
    pipeline, _ = make_pipeline(
        orthanc, assembly={"sources": {MODALITY: {"completion": "quiet_period", "quiet_period_s": 60}}}
    )
    ledger, port = ledger_of(pipeline), pipeline.listener_port()
    study = head_ct_study(1852, n_slices=12, patient_id="IAN1", accession="I1").datasets
    _send(save_study(study, tmp_path / "ian"), port)
    assert send_ian(port, "PACSAI", "ORTHANC", ian_notice(study), "2.25.1852").ok
    uid = str(study[0].StudyInstanceUID)
    assert wait_for_states(ledger, [uid], {"delivered"}, timeout_s=120), ledger.status.report(time.time())
    [complete] = [e.detail for e in ledger.audit.events(uid) if e.type == "study_complete"]
    assert (complete["rule"], complete["notices"], complete["received"]) == ("ian", 1, 12)
