"""The listener as MPPS SCP and IAN SCP (PS3.4 F, R) against a real pynetdicom modality, no Ray:
what the rules accept is stored, what they refuse is answered with its status and audited."""

from __future__ import annotations

import pytest

from actors.adapters.dimse import Listener
from core.config import ListenerConfig, StorageConfig
from core.mpps import StepStatus
from demo.modality import send_ian, send_mpps_create, send_mpps_set
from state.ledger import open_ledger
from synthetic.procedure_steps import ian_notice, mpps_n_create, mpps_n_set, mpps_uid
from synthetic.synthetic_dicom import make_cxr_study


@pytest.fixture
def scp(tmp_path):
    ledger = open_ledger(StorageConfig(var_dir=str(tmp_path)))
    listener = Listener(
        ListenerConfig(port=0, min_free_bytes=0), tmp_path / "spool", tmp_path / "rejected", ledger, quiet_period_s=60.0
    )
    listener.start()
    yield listener, ledger
    listener.stop()
    ledger.close()


def test_a_step_is_created_then_completed_and_a_final_step_can_no_longer_be_updated(scp):
    listener, ledger = scp
    study = make_cxr_study(seed=1801, n_images=2, patient_id="MPPSSCP")
    uid, step = str(study[0].StudyInstanceUID), mpps_uid(study)
    assert send_mpps_create(listener.port, "PACSAI", "CT1", mpps_n_create(study), step).ok
    assert send_mpps_create(listener.port, "PACSAI", "CT1", mpps_n_create(study), step).status == 0x0111
    assert send_mpps_set(listener.port, "PACSAI", "CT1", mpps_n_set(study), step).ok
    again = send_mpps_set(listener.port, "PACSAI", "CT1", mpps_n_set(study), step)
    assert (again.status, again.error_id) == (0x0110, 0xA710)
    assert again.error_comment == "Performed Procedure Step Object may no longer be updated"
    [stored] = ledger.evidence.steps_for([uid])[uid]
    assert stored.status is StepStatus.COMPLETED and stored.calling_ae == "CT1"
    assert stored.expected == {str(d.SOPInstanceUID) for d in study}
    refused = [e.detail for e in ledger.audit.events(limit=100) if e.type == "evidence_refused"]
    assert [(r["request"], r["status"]) for r in refused] == [("N-CREATE", "0x0111"), ("N-SET", "0x0110")]


def test_an_n_create_that_breaks_f_7_2_is_refused_with_its_status(scp):
    listener, ledger = scp
    study = make_cxr_study(seed=1802, n_images=1, patient_id="MPPSBAD")
    completed = mpps_n_create(study)
    completed.PerformedProcedureStepStatus = "COMPLETED"  # N-CREATE must be IN PROGRESS
    assert send_mpps_create(listener.port, "PACSAI", "CT1", completed, mpps_uid(study)).status == 0x0106
    unknown = send_mpps_set(listener.port, "PACSAI", "CT1", mpps_n_set(study), "2.25.404")
    assert unknown.status == 0x0112  # no such step
    assert ledger.evidence.steps_for([str(study[0].StudyInstanceUID)]) == {}


def test_an_availability_notification_is_stored_once(scp):
    listener, ledger = scp
    study = make_cxr_study(seed=1803, n_images=2, patient_id="IANSCP")
    uid = str(study[0].StudyInstanceUID)
    assert send_ian(listener.port, "PACSAI", "ORTHANC", ian_notice(study), "2.25.1803").ok
    assert send_ian(listener.port, "PACSAI", "ORTHANC", ian_notice(study), "2.25.1803").status == 0x0111
    [notice] = ledger.evidence.notices_for([uid])[uid]
    assert {i.sop_instance_uid for i in notice.instances} == {str(d.SOPInstanceUID) for d in study}
    broken = ian_notice(study)
    del broken.StudyInstanceUID
    assert send_ian(listener.port, "PACSAI", "ORTHANC", broken, "2.25.1804").status == 0x0120
