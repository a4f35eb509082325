"""core.fhir: AI results as an R4 transaction Bundle (standards.md 6.5)."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.bundle import Bundle

from core.fhir import AIAST, ResultSubject, build_result_bundle, validate
from core.findings import term_for
from core.records import Finding, Prediction

PREDICTION = Prediction(
    "chest_xray",
    "pacsai-cxr",
    "0.1.0-demo",
    (Finding("effusion", term_for("effusion"), 0.83, 0.5), Finding("hernia", term_for("hernia"), 0.12, 0.5)),
    ("1.2.3.4.1",),
    demo=True,
)
SUBJECT = ResultSubject(
    study_uid="1.2.3",
    sr_uid="1.2.3.9",
    patient={"system": "http://hosp.example/mrn", "value": "MRN123"},
    accession="ACC3003",
    accession_system=None,
    issued="2025-03-01T10:40:00+00:00",
    effective="2025-03-01",
)


def resources(bundle):
    out = {}
    for entry in bundle["entry"]:
        out.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    return out


def test_bundle_is_a_valid_r4_transaction_of_puts():
    bundle = build_result_bundle(PREDICTION, SUBJECT, "http://ehr.example/fhir/", "PACS-AI Bridge")
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction"
    for entry in bundle["entry"]:
        r = entry["resource"]
        assert entry["request"] == {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
        assert entry["fullUrl"] == f"http://ehr.example/fhir/{r['resourceType']}/{r['id']}"


def test_report_has_one_observation_per_finding_with_code_probability_device_and_study():
    res = resources(build_result_bundle(PREDICTION, SUBJECT, "http://e/fhir", "X"))
    [report], [device], observations = res["DiagnosticReport"], res["Device"], res["Observation"]
    assert len(observations) == 2
    assert report["result"] == [{"reference": f"Observation/{o['id']}"} for o in observations]
    study = {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}}
    assert report["imagingStudy"] == [study]
    assert report["subject"]["identifier"]["value"] == "MRN123"
    assert report["basedOn"][0]["identifier"]["value"] == "ACC3003"
    assert report["identifier"] == [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.9"}]
    assert report["status"] == "preliminary" and "DEMO" in report["conclusion"]
    effusion = observations[0]
    assert effusion["code"]["coding"] == [
        {"system": "http://snomed.info/sct", "code": "60046008", "display": "Pleural effusion"}
    ]
    assert effusion["valueCodeableConcept"]["coding"][0]["display"] == "Present"
    assert observations[1]["valueCodeableConcept"]["coding"][0]["display"] == "Absent"
    [prob] = effusion["component"]
    assert prob["code"]["coding"][0]["code"] == "122157"
    assert prob["valueQuantity"] == {"value": 0.83, "unit": "1", "system": "http://unitsofmeasure.org", "code": "1"}
    assert effusion["device"] == {"reference": f"Device/{device['id']}"}
    assert effusion["derivedFrom"] == [study]
    assert device["deviceName"][0]["name"] == "pacsai-cxr"
    assert device["version"] == [{"value": "0.1.0-demo"}]
    # a local code keeps its scheme as a URN (99PACSAI), never a guessed standard code
    assert observations[1]["code"]["coding"][0]["system"] == "urn:pacs-ai-bridge:99PACSAI"


def test_ai_asserted_resources_carry_aiast():
    res = resources(build_result_bundle(PREDICTION, SUBJECT, "http://e/fhir", "X"))
    for r in res["DiagnosticReport"] + res["Observation"]:
        assert AIAST in r["meta"]["security"]


def test_ids_are_stable_so_a_resend_updates_instead_of_duplicating():
    one = build_result_bundle(PREDICTION, SUBJECT, "http://e/fhir", "X")
    two = build_result_bundle(PREDICTION, SUBJECT, "http://e/fhir", "X")
    assert [e["fullUrl"] for e in one["entry"]] == [e["fullUrl"] for e in two["entry"]]


def test_unknown_patient_leaves_subject_out():
    subject = ResultSubject("1.2.3", "1.2.3.9", None, "", None, "2025-03-01T10:40:00+00:00")
    report = resources(build_result_bundle(PREDICTION, subject, "http://e/fhir", "X"))["DiagnosticReport"][0]
    assert "subject" not in report and "basedOn" not in report


def test_validate_names_the_bad_element():
    with pytest.raises(ValueError, match="Patient.birthDate"):
        validate({"resourceType": "Patient", "birthDate": "1970-13-01"})
    with pytest.raises(ValueError, match="resourceType"):
        validate({"resourceType": "NoSuchThing"})
