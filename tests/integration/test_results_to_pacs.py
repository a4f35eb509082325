"""Issue 12, results back to the PACS: key images and their KOS with the SR, and a reader's review
as a verified SR, against a real Orthanc (and a refusing pynetdicom SCP)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    KeyObjectSelectionDocumentStorage,
    ParametricMapStorage,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt

from actors.adapters.dimse import DimsePacsClient
from actors.pipeline import wait_until
from actors.sr_writer import SRWriteWork
from actors.verified_delivery import VerifiedDeliveryWork
from core.audit import AuditEvent
from core.clinical import FindingDecision, ReviewRequest
from core.records import Prediction
from core.results import OutputKind, SrVersion
from core.review_submissions import ReviewDecision
from core.sr import SRBuilder, SRIdentity
from core.types import AuditEventType
from demo.dcmtk import dciodvfy
from state.ledger import Ledger, open_ledger
from state.sealed_files import dcmread_plain
from synthetic.synthetic_dicom import make_cxr_study, save_study
from tests.integration.conftest import ledger_of, needs_peers, pacs_outputs, send_files, wait_for_states

pytestmark = [pytest.mark.integration, needs_peers]


def _submit(ledger: Ledger, sr_uid: str, reader: str) -> int:
    """A reader's review as the review API records it: disagrees that there is an effusion."""
    version = ledger.results.version(sr_uid)
    assert version is not None
    decision = FindingDecision("effusion", "disagree", False, "no effusion: a skin fold")
    request = ReviewRequest(f"{reader.title()}^Dr", (decision,), "normal chest", heatmap_viewed=True)
    return ledger.clinical.record_review(version, reader, request, {}, f"oidc:{reader}", time.time()).submission_id


def _valid(ds: Dataset, path: Path) -> list[str]:
    ds.save_as(path, enforce_file_format=True)
    errors, _ = dciodvfy(path)
    return errors


def _coded(ds: Dataset) -> dict[str, str]:
    """Every CODE and TEXT content item of an SR tree: concept code value -> value."""
    out: dict[str, str] = {}
    for item in ds.get("ContentSequence", []):
        name = str(item.ConceptNameCodeSequence[0].CodeValue) if "ConceptNameCodeSequence" in item else ""
        if item.ValueType == "CODE":
            out[name] = str(item.ConceptCodeSequence[0].CodeValue)
        elif item.ValueType == "TEXT":
            out[name] = str(item.TextValue)
        out.update(_coded(item))
    return out


def _states(ledger: Ledger, *ids: int) -> list[str]:
    return [ledger.clinical.verified_submission(i).state.value for i in ids]  # type: ignore[union-attr]


class RefusingPacs:
    """A real C-STORE SCP that refuses every object (0xA700, out of resources)."""

    def __init__(self) -> None:
        ae = AE(ae_title="REFUSER")
        ae.supported_contexts = AllStoragePresentationContexts
        self.calls = 0
        self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = int(self._server.server_address[1])

    def _store(self, event: Any) -> int:
        self.calls += 1
        return 0xA700

    def stop(self) -> None:
        self._server.shutdown()


def test_key_images_go_with_the_sr_and_a_review_comes_back_verified_after_a_pacs_outage(
    tmp_path, orthanc, make_pipeline
):
    pipeline, cfg = make_pipeline(orthanc, clinical={"key_images": True})
    datasets = make_cxr_study(31, frozenset({"effusion"}), patient_id="P31", accession="A31")
    study_uid = str(datasets[0].StudyInstanceUID)
    send_files(save_study(datasets, tmp_path / "in"), pipeline, cfg)
    ledger = ledger_of(pipeline)
    assert wait_for_states(ledger, [study_uid], {"delivered"}, timeout_s=90), ledger.status.report(time.time())

    # Key images: one per positive finding with a heatmap, one KOS, all with the SR.
    [job] = ledger.jobs.for_study(study_uid)
    items = ledger.outbox.items(job.job_id)
    kinds = Counter(i.item.kind for i in items)
    assert kinds[OutputKind.SR] == 1 and kinds[OutputKind.KOS] == 1
    assert kinds[OutputKind.KEY_IMAGE] == kinds[OutputKind.PM] >= 1
    assert {i.state.value for i in items} == {"delivered"}
    outputs = pacs_outputs(orthanc, study_uid)
    assert {str(ds.SOPInstanceUID) for v in outputs.values() for ds in v} == {i.item.sop_instance_uid for i in items}
    assert len(outputs[SecondaryCaptureImageStorage]) == kinds[OutputKind.KEY_IMAGE]
    [kos] = outputs[KeyObjectSelectionDocumentStorage]
    shown = {
        s.ReferencedSOPInstanceUID
        for e in kos.CurrentRequestedProcedureEvidenceSequence
        for r in e.ReferencedSeriesSequence
        for s in r.ReferencedSOPSequence
    }
    assert shown == {str(ds.SOPInstanceUID) for ds in outputs[SecondaryCaptureImageStorage]}
    for sc in outputs[SecondaryCaptureImageStorage]:
        assert sc.BurnedInAnnotation == "YES" and sc.StudyInstanceUID == study_uid
    for n, ds in enumerate(d for v in outputs.values() for d in v):
        assert _valid(ds, tmp_path / f"out{n}.dcm") == [], ds.SOPClassUID
    published = {r.kind for r in ledger.outbox.published(study_uid=study_uid)}
    assert published == {OutputKind.SR, OutputKind.PM, OutputKind.KEY_IMAGE, OutputKind.KOS}

    # Idempotent like the SR: writing them again gives the same objects (no new UIDs).
    [prediction] = job.record.inference.predictions
    identity = SRIdentity(cfg.sr.manufacturer, cfg.sr.series_number)
    writer = SRWriteWork(ledger, pipeline.layout.outbox, SRBuilder(identity), "test", key_images=identity)
    again = writer.write_key_images(job, prediction)
    before = {
        i.item.sop_instance_uid: i.item.path for i in items if i.item.kind in (OutputKind.KEY_IMAGE, OutputKind.KOS)
    }
    assert {i.sop_instance_uid: i.path for i in again} == before

    # A review while the PACS is down waits (no attempt spent); a newer one by the same reader
    # supersedes it; after the restart only the newer reaches the PACS, verified.
    [ai_sr] = outputs[Comprehensive3DSRStorage]
    sr_uid = str(ai_sr.SOPInstanceUID)
    orthanc.stop()
    first = _submit(ledger, sr_uid, "rita")
    time.sleep(2.5)
    assert _states(ledger, first) == ["pending"] and ledger.clinical.verified_submission(first).attempts == 0
    second = _submit(ledger, sr_uid, "rita")
    orthanc.start()
    assert wait_until(lambda: _states(ledger, second) == ["delivered"], 30, 0.2), _states(ledger, first, second)
    assert _states(ledger, first) == ["superseded"]
    srs = [ds for ds in pacs_outputs(orthanc, study_uid)[Comprehensive3DSRStorage] if ds.SOPInstanceUID != sr_uid]
    [verified] = srs
    assert verified.SOPInstanceUID == ledger.clinical.verified_submission(second).verified_uid
    assert verified.VerificationFlag == "VERIFIED"
    assert verified.VerifyingObserverSequence[0].VerifyingObserverName == "Rita^Dr"
    [pred] = verified.PredecessorDocumentsSequence
    assert pred.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sr_uid
    said = _coded(verified)  # disagreed: absent (SCT 2667000), with the comment and the final diagnosis
    assert (said["RV001"], said["RV002"], said["121106"], said["RV003"]) == (
        "RV011",
        "2667000",
        "no effusion: a skin fold",
        "normal chest",
    )
    assert _valid(verified, tmp_path / "verified.dcm") == []
    assert ParametricMapStorage in pacs_outputs(orthanc, study_uid)
    events = [e for e in ledger.audit.events(study_uid) if e.type == AuditEventType.VERIFIED_SR_DELIVERED]
    assert [(e.sop_instance_uid, e.detail["review_version"]) for e in events] == [(str(verified.SOPInstanceUID), 2)]
    # DICOMweb lists the delivered one with the AI SR's class, in its own series; the first, built
    # while the PACS was down and superseded before it was sent, is not listed (the PACS lacks it).
    listed = [
        (r.sop_instance_uid, r.series_uid, r.sop_class_uid) for r in ledger.clinical.published_verified(study_uid)
    ]
    assert listed == [(str(verified.SOPInstanceUID), str(verified.SeriesInstanceUID), str(ai_sr.SOPClassUID))]
    assert ledger.clinical.verified_submission(first).verified_path  # built, then superseded
    assert ledger.clinical.published_verified(series_uid=str(ai_sr.SeriesInstanceUID)) == []

    # A PACS that refuses: one attempt per refusal, dead at retry.max_attempts.
    pipeline.stop()
    refuser = RefusingPacs()
    try:
        other = _submit(ledger, sr_uid, "omar")
        pacs = DimsePacsClient(cfg.pacs.model_copy(update={"port": refuser.port, "ae_title": "REFUSER"}))
        work = VerifiedDeliveryWork(ledger, ledger.clinical, pacs, pipeline.layout.outbox, "test", "GH", 2)
        assert work() == 0 and _states(ledger, other) == ["pending"]
        assert work() == 0 and _states(ledger, other) == ["dead"] and refuser.calls == 2
        assert "0xA700" in ledger.clinical.verified_submission(other).last_error  # type: ignore[union-attr]
        assert work() == 0 and refuser.calls == 2
    finally:
        refuser.stop()
    dead = ledger.clinical.verified_submission(other)
    assert dead is not None and dead.verified_path  # built, refused to the end: not one of ours to list
    assert [r.sop_instance_uid for r in ledger.clinical.published_verified(study_uid)] == [str(verified.SOPInstanceUID)]
    assert dcmread_plain(ledger.clinical.verified_submission(second).verified_path, ledger.keyring) == verified


def test_verified_submissions_are_taken_newest_first_recorded_once_and_given_up_on_both_backends(backend, storage_for):
    ledger = open_ledger(storage_for(backend))
    prediction = Prediction("chest_xray", "m", "1", (), ())
    version = SrVersion(
        "1.2.9", Comprehensive3DSRStorage, "1.2.8", "1.2.3", 1, 1, "chest_xray", "m", "1", "", prediction
    )
    request = ReviewRequest("Rita^Dr", (FindingDecision("effusion", "disagree", False, "skin fold"),), "normal chest")
    ids = [
        ledger.clinical.record_review(version, r, request, {}, f"oidc:{r}", 1.0 + n).submission_id
        for n, r in enumerate(["rita", "rita", "omar"])
    ]
    pending = ledger.clinical.pending_verified(10)
    assert [(p.submission_id, p.reader, p.version) for p in pending] == [(ids[1], "rita", 2), (ids[2], "omar", 1)]
    assert pending[0].decisions == (ReviewDecision("effusion", "disagree", False, "skin fold"),)
    assert pending[0].final_diagnosis == "normal chest" and pending[0].reader_name == "Rita^Dr"

    ledger.clinical.mark_verified_built(ids[1], "1.2.99", "/outbox/1.2.99.dcm")
    event = AuditEvent(AuditEventType.VERIFIED_SR_DELIVERED, "test", "1.2.3", "1.2.99")
    assert ledger.clinical.mark_verified_delivered(ids[1], 5.0, event) is True
    assert ledger.clinical.mark_verified_delivered(ids[1], 6.0, event) is False  # recorded once
    assert [e.type for e in ledger.audit.events("1.2.3")].count(AuditEventType.VERIFIED_SR_DELIVERED) == 1
    ledger.clinical.note_verified_failure(ids[2], "PACS answered 0xA700", dead=False)
    [omar] = ledger.clinical.pending_verified(10)
    assert omar.attempts == 1 and omar.last_error == "PACS answered 0xA700"
    ledger.clinical.note_verified_failure(ids[2], "PACS answered 0xA700", dead=True)
    assert ledger.clinical.pending_verified(10) == []
    states = [ledger.clinical.verified_submission(i) for i in ids]
    assert [s.state.value for s in states if s] == ["superseded", "delivered", "dead"]
    assert states[1] is not None and states[1].verified_uid == "1.2.99" and states[1].attempts == 1
    ledger.close()
