"""Issue #5, priors: against a real Orthanc seeded with the patient's history by C-STORE.

The PACS knows our listener as a modality (C-FIND needs a known calling AE title in Orthanc,
C-MOVE a known destination), as a hospital PACS would.
"""

from __future__ import annotations

import time
from datetime import date, timedelta
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.sr.codedict import codes

from demo.dcmtk import dciodvfy, storescu
from demo.orthanc import OrthancProcess, free_port
from synthetic.synthetic_dicom import make_ct_series, make_cxr_study, save_study
from tests.integration.conftest import ledger_of, needs_peers, wait_for_states

pytestmark = [pytest.mark.integration, needs_peers]

PATIENT = {"patient_id": "PRI-7", "patient_name": "DOE^JANE"}
BIRTH = "19600101"


def _days_ago(n: int) -> str:
    return (date.today() - timedelta(days=n)).strftime("%Y%m%d")


def cxr(seed, findings=(), n=1, when=0, birth=BIRTH, **patient):
    datasets = make_cxr_study(
        seed=seed, findings=frozenset(findings), n_images=n, accession=f"ACC{seed}", **(PATIENT | patient)
    )
    for ds in datasets:
        ds.PatientBirthDate = birth
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = _days_ago(when)
    return datasets


def seed_pacs(orthanc, tmp_path: Path, *studies) -> None:
    files = [f for i, s in enumerate(studies) for f in save_study(s, tmp_path / f"seed{i}")]
    res = storescu(files, "127.0.0.1", orthanc.dicom_port, orthanc.aet, "MODALITY")
    assert res.returncode == 0, res.stderr[-500:]


@pytest.fixture
def pacs(tmp_path):
    """Orthanc that knows our listener (AE PACSAI on a port chosen now) as a modality."""
    port = free_port()
    orthanc = OrthancProcess(tmp_path / "pacs", modalities={"pacsai": ("PACSAI", "127.0.0.1", port)}).start()
    orthanc.listener_port = port
    yield orthanc
    orthanc.discard()


def the_sr(orthanc, study_uid):
    [meta] = orthanc.instances_of_study(study_uid, modality="SR")
    return orthanc.file(meta["ID"])


def comparison_items(sr):
    [container] = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    return {i.ConceptNameCodeSequence[0].CodeValue: i for i in container.ContentSequence}


def test_right_prior_is_found_retrieved_and_compared_another_patient_is_not(tmp_path, pacs, make_pipeline):
    prior = cxr(201, (), when=700)  # the patient's chest radiograph two years ago: no effusion
    impostor = cxr(202, ("effusion",), when=300, patient_name="ROE^RICHARD", birth="19991231")
    later_ct = make_ct_series(203, 2, rows=32, cols=32, **PATIENT)  # newer, but another modality
    for ds in later_ct:
        ds.PatientBirthDate, ds.StudyDate = BIRTH, _days_ago(100)
    current = cxr(204, ("effusion",), when=0)
    seed_pacs(pacs, tmp_path, prior, impostor, later_ct, current)
    pipeline, cfg = make_pipeline(
        pacs, listener={"port": pacs.listener_port}, priors={"enabled": True, "compare_images": ["chest_xray"]}
    )
    res = storescu(save_study(current, tmp_path / "now"), "127.0.0.1", pipeline.listener_port(), "PACSAI", "ORTHANC")
    assert res.returncode == 0, res.stderr[-500:]
    ledger = ledger_of(pipeline)
    uid = str(current[0].StudyInstanceUID)
    assert wait_for_states(ledger, [uid], {"delivered"}, timeout_s=120), ledger.status.report(time.time())

    raw = the_sr(pacs, uid)
    (tmp_path / "sr.dcm").write_bytes(raw)
    assert dciodvfy(tmp_path / "sr.dcm")[0] == []
    sr = dcmread(BytesIO(raw))
    items = comparison_items(sr)
    assert items["122140"].ConceptCodeSequence[0].CodeMeaning == "Yes"
    text = items["121066"].TextValue
    prior_uid = str(prior[0].StudyInstanceUID)
    assert prior_uid in text and _days_ago(700) in text and str(impostor[0].StudyInstanceUID) not in text
    [other] = sr.PertinentOtherEvidenceSequence
    assert other.StudyInstanceUID == prior_uid
    assert {s.ReferencedSOPInstanceUID for s in other.ReferencedSeriesSequence[0].ReferencedSOPSequence} == {
        str(d.SOPInstanceUID) for d in prior
    }

    groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
    [effusion] = [g for g in groups if g.tracking_identifier.endswith(":effusion")]
    change = effusion.get_qualitative_evaluations(
        name=hd.sr.CodedConcept("111424", "DCM", "Comparison to previous studies")
    )
    assert change[0].value.meaning == "New finding"
    assert effusion.get_qualitative_evaluations(name=codes.DCM.PresenceOfProperty)[0].value == codes.SCT.Present

    [job] = ledger.jobs.for_study(uid)
    priors = job.record.priors
    assert priors.status == "found" and priors.study.study_uid == prior_uid
    assert sorted(priors.retrieved.sop_instance_uids) == sorted(str(d.SOPInstanceUID) for d in prior)
    assert job.record.inference.prior_prediction("chest_xray") is not None
    # The retrieved prior is kept and visible, starts no job, and is not reported.
    assert set(ledger.intake.states(prior_uid).values()) == {"skipped"}
    assert ledger.jobs.for_study(prior_uid) == []
    # The other patient's study: never retrieved, flagged for review, audited.
    assert ledger.intake.states(str(impostor[0].StudyInstanceUID)) == {}
    assert ledger.status.report(time.time()).review_flags_open == 1
    [flag] = ledger.reviews.flags()
    assert (flag.kind, flag.other_study_uid) == ("prior_identity_conflict", str(impostor[0].StudyInstanceUID))
    conflicts = [e for e in ledger.audit.events(uid) if e.type == "prior_identity_conflict"]
    assert conflicts[0].detail["differing"] == ["PatientName", "PatientBirthDate"]
    assert "ROE" not in str(conflicts) and "DOE" not in str(conflicts)  # no names in the audit trail
    assert ledger.audit.verify() is None


def test_pacs_down_for_queries_results_still_come_saying_priors_unavailable(tmp_path, pacs, make_pipeline):
    pipeline, cfg = make_pipeline(
        pacs, listener={"port": pacs.listener_port}, assembly={"completion": "pacs_counts"}, priors={"enabled": True}
    )
    ledger = ledger_of(pipeline)
    pacs.stop()
    current = cxr(211, ("nodule",))
    res = storescu(save_study(current, tmp_path / "now"), "127.0.0.1", pipeline.listener_port(), "PACSAI", "ORTHANC")
    assert res.returncode == 0, res.stderr[-500:]
    uid = str(current[0].StudyInstanceUID)
    assert wait_for_states(ledger, [uid], {"written"}, timeout_s=60), ledger.status.report(time.time())
    pacs.start()
    assert wait_for_states(ledger, [uid], {"delivered"}, timeout_s=60)

    items = comparison_items(dcmread(BytesIO(the_sr(pacs, uid))))
    assert items["122140"].ConceptCodeSequence[0].CodeMeaning == "No"
    assert items["121066"].TextValue.startswith("Priors were not available: the PACS could not be queried")
    events = ledger.audit.events(uid)
    [complete] = [e for e in events if e.type == "study_complete"]
    assert complete.detail["rule"] == "quiet_period" and complete.detail["verdict"] == "cannot_tell"
    [query] = [e for e in events if e.type == "prior_query"]
    assert query.detail["status"] == "unavailable"


@pytest.mark.parametrize("method", ["c-move", "c-get"])
def test_query_retrieve_adapter_against_orthanc(tmp_path, pacs, method, caplog):
    """No Ray: C-FIND answers and counts, then one series retrieved the configured way; the
    patient's name and ID never reach the logs."""
    import logging

    caplog.set_level(logging.DEBUG, logger="pynetdicom")
    from actors.adapters.dimse import Listener
    from actors.adapters.query_retrieve import DimseQueryRetrieve
    from core.config import ListenerConfig, PacsConfig, StorageConfig
    from core.errors import DependencyUnavailable
    from core.priors import StudyQuery
    from state.ledger import open_ledger

    prior = cxr(221, n=2, when=400)
    seed_pacs(pacs, tmp_path, prior)
    ledger = open_ledger(StorageConfig(var_dir=str(tmp_path)))
    listener = Listener(
        ListenerConfig(port=pacs.listener_port, min_free_bytes=0),
        tmp_path / "spool",
        tmp_path / "rejected",
        ledger,
        60.0,
    )
    listener.start()
    try:
        qr = DimseQueryRetrieve(
            PacsConfig(ae_title=pacs.aet, host="127.0.0.1", port=pacs.dicom_port),
            5,
            move_destination="PACSAI",
            on_store=listener.handle_store,
        )
        [study] = qr.find_studies(StudyQuery("PRI-7", "", ("DX",), _days_ago(1000), _days_ago(0)))
        assert (study.study_uid, study.study_date, study.identity.birth_date) == (
            str(prior[0].StudyInstanceUID),
            _days_ago(400),
            BIRTH,
        )
        [series] = qr.find_series(study.study_uid)
        counts = qr.study_counts(study.study_uid)
        assert (counts.study_count, dict(counts.series)) == (2, {series.series_uid: 2})
        assert not qr.study_counts("1.2.3.4.5").known
        ledger.intake.expect_prior_series(series.series_uid, study.study_uid, "9.9", 1, time.time())
        outcome = qr.retrieve_series(study.study_uid, series.series_uid, method)
        assert outcome.ok and outcome.completed == 2
        assert ledger.intake.states(study.study_uid) == {str(d.SOPInstanceUID): "skipped" for d in prior}
        assert ledger.jobs.for_study(study.study_uid) == []
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "Find SCP Result" in logged or "C-FIND" in logged  # pynetdicom did log the exchange
        assert "PRI-7" not in logged and str(prior[0].PatientName) not in logged
        pacs.discard()  # down for good: a killed PACS refuses the association as a stopped one does
        with pytest.raises(DependencyUnavailable):
            qr.find_series(study.study_uid)
    finally:
        listener.stop()
        ledger.close()
