"""Issue #6 end to end: HL7 order -> study (storescu) -> priority lane -> SR with the reason for
the study in a real Orthanc -> FHIR DiagnosticReport in a real (test) FHIR server."""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import hl7
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydicom import dcmread

from actors.adapters.mllp import MllpClient
from actors.pipeline import wait_until
from core.fhir import AIAST
from core.types import Priority
from demo.dcmtk import dciodvfy, storescu
from demo.orthanc import free_port
from state.ehr_outbox import EhrOutbox
from state.ledger import open_database
from synthetic.synthetic_dicom import make_cxr_study, save_study
from tests.hl7_messages import orm
from tests.integration.conftest import ledger_of, needs_peers, wait_for_states
from tests.integration.fhir_server import FhirTestServer
from tests.integration.phi_grep import loose_modes, phi_hits

pytestmark = [pytest.mark.integration, needs_peers]

MRN, NAME, BIRTH = "ZQXMRN81", "ZQXFAMILY^ZQXGIVEN", "19700615"
"""Long enough not to turn up by chance in sealed (random-looking) bytes."""
HL7 = {"listener": {"port": 0}, "identifier_systems": {"HOSP": "http://hosp.example/mrn"}}


def ehr_section(server: FhirTestServer) -> dict:
    return {"fhir": {"base_url": server.base_url, "timeout_s": 2, "allow_plaintext": True}, "poll_interval_s": 0.2}


def send_study(
    tmp_path: Path, pipeline, cfg, seed: int, patient_id: str, accession: str, name="SYNTHETIC^PATIENT", birth=""
):
    datasets = make_cxr_study(
        seed=seed, findings=frozenset({"effusion"}), patient_id=patient_id, accession=accession, patient_name=name
    )
    for ds in datasets:
        ds.PatientBirthDate = birth
    files = save_study(datasets, tmp_path / f"in{seed}")
    res = storescu(files, "127.0.0.1", pipeline.listener_port(), cfg.listener.ae_title)
    assert res.returncode == 0, res.stderr[-500:]
    return str(datasets[0].StudyInstanceUID)


def test_stat_ed_order_puts_the_study_first_and_its_reason_in_the_sr_and_the_ehr(
    tmp_path, orthanc, make_pipeline, backend
):
    """On both backends: with PostgreSQL the context store, the ledger and the EHR outbox are
    all schemas of the one server (issue 9)."""
    fhir = FhirTestServer(free_port()).start()
    try:
        pipeline, cfg = make_pipeline(orthanc, backend=backend, hl7=HL7, ehr=ehr_section(fhir))
        client = MllpClient("127.0.0.1", pipeline.hl7_port())
        try:
            order = orm("STAT81", mrn=MRN, accession="ACC81", priority="S", patient_class="E", name=f"{NAME}^A^^DR^^L")
            [ack] = client.send(order.encode())
        finally:
            client.close()
        assert str(hl7.parse(ack.decode()).segment("MSA")(1)) == "AA"
        uid = send_study(tmp_path, pipeline, cfg, 81, MRN, "ACC81", NAME, BIRTH)
        ledger = ledger_of(pipeline)
        assert wait_for_states(ledger, [uid], {"delivered"}), ledger.status.report(time.time())

        # The job ran in the STAT lane and carries the clinical context, no identifiers.
        job = ledger.jobs.for_study(uid)[-1]
        assert job.priority == Priority.STAT
        ctx = job.record.context
        assert (ctx.match, ctx.priority, ctx.encounter_class) == ("accession", "stat", "EMER")
        assert (ctx.age_years, ctx.sex) == (54, "female")  # born 1970-06-15, study 2025-01-01
        assert ctx.indication == "Acute chest pain, rule out pneumothorax"
        assert ctx.location == "ED BAY3 BED2 (HOSP)"
        stored = ledger.jobs.raw_record(job.job_id)
        assert not any(s in stored for s in (MRN, "ACC81", "ZQXFAMILY"))

        # The SR names the order it fulfils and the reason for the study; dciodvfy is clean.
        [meta] = orthanc.instances_of_study(uid, modality="SR")
        raw = orthanc.file(meta["ID"])
        (tmp_path / "sr.dcm").write_bytes(raw)
        assert dciodvfy(tmp_path / "sr.dcm")[0] == []
        [request] = dcmread(BytesIO(raw)).ReferencedRequestSequence
        assert request.ReasonForTheRequestedProcedure == "Acute chest pain, rule out pneumothorax"
        assert request.ReasonForRequestedProcedureCodeSequence[0].CodeValue == "R07.4"
        assert request.AccessionNumber == "ACC81"
        sr_uid = str(dcmread(BytesIO(raw)).SOPInstanceUID)

        # Every read of the context is audited; the routing decision records the lane.
        events = ledger.audit.events(uid)
        purposes = [e.detail["purpose"] for e in events if e.type == "context_read"]
        assert any(p.startswith("routing") for p in purposes)
        assert any(p.startswith("sr") for p in purposes)
        routed = [e for e in events if e.type == "routed"][-1]
        assert routed.detail["priority"] == Priority.STAT

        # The EHR got one DiagnosticReport for the SR, about the patient and the order.
        assert wait_until(lambda: fhir.of_type("DiagnosticReport"), 60), fhir.errors
        [report] = fhir.of_type("DiagnosticReport")
        DiagnosticReport.model_validate(report)
        assert report["identifier"][0]["value"] == f"urn:oid:{sr_uid}"
        assert report["subject"]["identifier"]["value"] == MRN
        assert report["subject"]["identifier"]["system"] == "http://hosp.example/mrn"
        assert report["basedOn"][0]["identifier"]["value"] == "ACC81"
        assert AIAST in report["meta"]["security"]
        assert len(report["result"]) == len(cfg.models["chest_xray"].findings)
        assert len(fhir.of_type("Observation")) == len(report["result"])
        assert any(
            p.startswith("ehr report")
            for p in (e.detail["purpose"] for e in ledger.audit.events(uid) if e.type == "context_read")
        )
        if backend == "postgresql":  # nothing of the bridge went to a file under var/
            assert not (pipeline.layout.context).exists()
            assert not (pipeline.layout.ehr_outbox).exists()

        # Encryption at rest (issue 13): no byte of the patient's name, ID or birth date under
        # var/, compressed files inflated, databases included; the source files do hold them.
        needles = [NAME, "ZQXFAMILY", "ZQXGIVEN", MRN, BIRTH, "1970-06-15"]
        assert len(phi_hits(tmp_path / "in81", needles)) >= 4
        assert phi_hits(pipeline.layout.root, needles) == []
        assert loose_modes(pipeline.layout.root) == []  # files 0600, directories 0700
    finally:
        fhir.stop()


def test_reports_wait_in_the_outbox_while_the_fhir_endpoint_is_down(tmp_path, orthanc, make_pipeline):
    fhir = FhirTestServer(free_port())  # not started: the endpoint is down
    pipeline, cfg = make_pipeline(orthanc, ehr=ehr_section(fhir))
    uid = send_study(tmp_path, pipeline, cfg, 82, "P82", "ACC82")
    ledger = ledger_of(pipeline)
    assert wait_for_states(ledger, [uid], {"delivered"}), ledger.status.report(time.time())
    outbox = EhrOutbox(open_database(cfg.storage.ledger, pipeline.layout, "ehr"))

    def waiting() -> bool:
        rows = outbox.reports()
        return bool(rows) and rows[0].waits >= 2

    assert wait_until(waiting, 60)
    [row] = outbox.reports()
    assert (row.state, row.attempts) == ("pending", 0)  # an outage spends no retries
    failed = [e for e in ledger.audit.events(uid) if e.type == "ehr_report_failed"]
    assert len(failed) == 1 and failed[0].detail["unavailable"] is True  # one line per outage

    fhir.start()
    try:
        assert wait_until(lambda: outbox.counts()["delivered"] == 1, 60), fhir.errors
        [report] = fhir.of_type("DiagnosticReport")
        DiagnosticReport.model_validate(report)
        assert report["subject"]["identifier"] == {"value": "P82"}  # no HL7 context: DICOM ID
        assert fhir.errors == []
        # the outbox row is marked delivered first, the audit event follows in the ledger
        assert wait_until(lambda: [e.type for e in ledger.audit.events(uid)].count("ehr_report_delivered") == 1, 10)
    finally:
        fhir.stop()
        outbox.close()
