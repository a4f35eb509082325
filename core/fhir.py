"""FHIR R4 for the bridge: code systems, validation, and AI results as a DiagnosticReport.

Version: FHIR **R4** throughout, because the HL7 v2-to-FHIR IG we follow for the context is R4
and R4 is what EHRs run. fhir.resources 8 validates R5 by default; we validate with its
``R4B`` package, whose Patient, Encounter, Location, ServiceRequest, DiagnosticReport,
Observation, Device and Bundle are the R4 structures (R4B changed none of them; R5 renamed
``DiagnosticReport.imagingStudy`` to ``study``).

Results (standards.md 6.5): one transaction Bundle per SR with a Device (the algorithm and its
version), one Observation per finding (code, Present / Absent, the probability as a component
coded DCM 122157, derived from the ImagingStudy) and a DiagnosticReport that points at all of
them, the order (ServiceRequest by accession) and the study. Resources the AI asserted carry
the security label AIAST (HL7 AI Transparency on FHIR). Entries are ``PUT`` with ids derived
from the SR's SOP Instance UID, so a retried Bundle updates instead of duplicating.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from core.numbers import ascii_digits
from core.records import Finding, Prediction
from core.types import CodedTerm

__all__ = [
    "AIAST",
    "CODE_SYSTEMS",
    "ResultSubject",
    "build_result_bundle",
    "coding",
    "dicom_scheme",
    "resource_id",
    "system_for_dicom",
    "system_for_v2",
    "validate",
]

AIAST = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}
"""meta.security label of AI-asserted resources (HL7 AI Transparency on FHIR)."""

CODE_SYSTEMS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("LN", "LOINC"), "LN", "http://loinc.org"),
    (("SCT", "SNM", "SNOMED", "SNOMEDCT"), "SCT", "http://snomed.info/sct"),
    (("I10", "ICD10"), "I10", "http://hl7.org/fhir/sid/icd-10"),
    (("I10C", "ICD10CM"), "I10C", "http://hl7.org/fhir/sid/icd-10-cm"),
    (("I9C", "ICD9CM"), "I9C", "http://hl7.org/fhir/sid/icd-9-cm"),
    (("RADLEX", "RID"), "RADLEX", "http://radlex.org"),
    (("DCM",), "DCM", "http://dicom.nema.org/resources/ontology/DCM"),
    (("UCUM",), "UCUM", "http://unitsofmeasure.org"),
    (("99PACSAI",), "99PACSAI", "urn:pacs-ai-bridge:99PACSAI"),
)
"""(HL7 v2 table 0396 names, DICOM Coding Scheme Designator, FHIR system URI)."""

_BY_V2 = {name: uri for names, _, uri in CODE_SYSTEMS for name in names}
_BY_DICOM = {dcm: uri for _, dcm, uri in CODE_SYSTEMS}
_DICOM_BY_URI = {uri: dcm for _, dcm, uri in CODE_SYSTEMS}
_V2_TABLE = "http://terminology.hl7.org/CodeSystem/v2-"
_SCT = "http://snomed.info/sct"
_PROBABILITY = {"system": _BY_DICOM["DCM"], "code": "122157", "display": "Probability"}


def system_for_v2(name: str) -> str | None:
    """FHIR system URI of an HL7 v2 coding system name (CWE.3), if we know it.

    >>> system_for_v2("LN")
    'http://loinc.org'
    >>> system_for_v2("HL70203")
    'http://terminology.hl7.org/CodeSystem/v2-0203'
    """
    key = name.strip().upper()
    if key.startswith("HL7") and ascii_digits(key[3:]):
        return f"{_V2_TABLE}{key[3:].zfill(4)}"
    return _BY_V2.get(key)


def system_for_dicom(designator: str) -> str | None:
    """FHIR system URI of a DICOM Coding Scheme Designator, if we know it."""
    return _BY_DICOM.get(designator)


def dicom_scheme(system: str | None) -> str | None:
    """DICOM Coding Scheme Designator of a FHIR system URI, if we know it."""
    return _DICOM_BY_URI.get(system or "")


def coding(term: CodedTerm) -> dict[str, str]:
    """A FHIR Coding of a DICOM coded term (unknown schemes keep the code without a system)."""
    out = {"code": term.value, "display": term.meaning}
    system = system_for_dicom(term.scheme)
    return {"system": system, **out} if system else out


def resource_id(*parts: str) -> str:
    """A FHIR id (``[A-Za-z0-9-.]{1,64}``) derived from ``parts``; stable across runs.

    >>> resource_id("dr", "1.2.3") == resource_id("dr", "1.2.3")
    True
    """
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:40]


def validate(resource: Mapping[str, Any]) -> None:
    """Validate a resource (or Bundle) against the FHIR R4 structures.

    Raises:
        ValueError: It is not a valid R4 resource; the message names the element.
    """
    kind = str(resource.get("resourceType", ""))
    try:
        model = get_fhir_model_class(kind)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"resourceType: got {kind!r}; expected an R4 resource type") from exc
    try:
        model.model_validate(dict(resource))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ValueError(f"{kind}.{where}: {first.get('msg')}") from None


@dataclass(frozen=True, slots=True)
class ResultSubject:
    """What a result is about, for the report's references.

    Attributes:
        study_uid: Study Instance UID (the ImagingStudy, by identifier).
        sr_uid: SOP Instance UID of the SR the report mirrors (report identifier, and the
            seed of every resource id).
        patient: A FHIR Identifier of the patient, if known.
        accession: The accession number (ServiceRequest identifier of type ACSN), if known.
        accession_system: Identifier.system of the accession, if known.
        issued: When the result was made (FHIR instant).
        effective: When the study was acquired (FHIR dateTime), if known.
    """

    study_uid: str
    sr_uid: str
    patient: Mapping[str, Any] | None
    accession: str
    accession_system: str | None
    issued: str
    effective: str = ""


def _reference(kind: str, identifier: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": kind, "identifier": dict(identifier)}


def _study_ref(subject: ResultSubject) -> dict[str, Any]:
    return _reference("ImagingStudy", {"system": "urn:dicom:uid", "value": f"urn:oid:{subject.study_uid}"})


def _device(prediction: Prediction, manufacturer: str, rid: str) -> dict[str, Any]:
    device: dict[str, Any] = {
        "resourceType": "Device",
        "id": rid,
        "deviceName": [{"name": prediction.model_name, "type": "model-name"}],
        "version": [{"value": prediction.model_version}],
        "manufacturer": manufacturer,
        "type": {"text": "AI algorithm"},
    }
    if prediction.demo:
        device["note"] = [{"text": "Demo model trained on synthetic phantoms; not clinical."}]
    return device


def _observation(finding: Finding, subject: ResultSubject, rid: str, device_id: str) -> dict[str, Any]:
    presence = (
        {"system": _SCT, "code": "52101004", "display": "Present"}
        if finding.present
        else {"system": _SCT, "code": "2667000", "display": "Absent"}
    )
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": rid,
        "meta": {"security": [AIAST]},
        "status": "preliminary",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "imaging",
                    }
                ]
            }
        ],
        "code": {"coding": [coding(finding.term)], "text": finding.key},
        "issued": subject.issued,
        "valueCodeableConcept": {"coding": [presence]},
        "component": [
            {
                "code": {"coding": [_PROBABILITY]},
                "valueQuantity": {
                    "value": round(float(finding.probability), 6),
                    "unit": "1",
                    "system": "http://unitsofmeasure.org",
                    "code": "1",
                },
            }
        ],
        "note": [{"text": f"Present at or above threshold {finding.threshold:g}."}],
        "device": {"reference": f"Device/{device_id}"},
        "derivedFrom": [_study_ref(subject)],
    }
    if subject.patient:
        obs["subject"] = _reference("Patient", subject.patient)
    if subject.effective:
        obs["effectiveDateTime"] = subject.effective
    return obs


def _report(prediction: Prediction, subject: ResultSubject, rid: str, observation_ids: Sequence[str]) -> dict[str, Any]:
    positive = [f.term.meaning for f in prediction.findings if f.present]
    conclusion = (
        f"AI ({prediction.model_name} {prediction.model_version}, unverified): "
        + (("present: " + ", ".join(positive)) if positive else "no finding at threshold")
        + (" [DEMO model, not for clinical use]" if prediction.demo else "")
    )
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "meta": {"security": [AIAST]},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{subject.sr_uid}"}],
        "status": "preliminary",
        "category": [{"coding": [{"system": f"{_V2_TABLE}0074", "code": "RAD"}]}],
        "code": {
            "coding": [
                {
                    "system": "http://loinc.org",
                    "code": "18748-4",
                    "display": "Diagnostic imaging study",
                }
            ],
            "text": f"AI result: {prediction.model_name}",
        },
        "issued": subject.issued,
        "imagingStudy": [_study_ref(subject)],
        "result": [{"reference": f"Observation/{oid}"} for oid in observation_ids],
        "conclusion": conclusion,
    }
    if subject.patient:
        report["subject"] = _reference("Patient", subject.patient)
    if subject.accession:
        acsn: dict[str, Any] = {
            "type": {"coding": [{"system": f"{_V2_TABLE}0203", "code": "ACSN"}]},
            "value": subject.accession,
        }
        if subject.accession_system:
            acsn["system"] = subject.accession_system
        report["basedOn"] = [_reference("ServiceRequest", acsn)]
    if subject.effective:
        report["effectiveDateTime"] = subject.effective
    return report


def build_result_bundle(
    prediction: Prediction, subject: ResultSubject, base_url: str, manufacturer: str
) -> dict[str, Any]:
    """Build the transaction Bundle that puts one SR's result into the EHR.

    Args:
        prediction: The model result the SR encodes.
        subject: Patient, order, study and SR the result belongs to.
        base_url: The FHIR base URL (for the entries' ``fullUrl``).
        manufacturer: The algorithm's manufacturer (Device.manufacturer).

    Returns:
        A validated R4 transaction Bundle (JSON-ready dict).

    Raises:
        ValueError: The Bundle does not validate (a bug, not bad input).
    """
    device_id = resource_id("device", prediction.model_name, prediction.model_version)
    obs_ids = [resource_id("obs", subject.sr_uid, f.key) for f in prediction.findings]
    resources = [_device(prediction, manufacturer, device_id)]
    resources += [_observation(f, subject, oid, device_id) for f, oid in zip(prediction.findings, obs_ids, strict=True)]
    resources.append(_report(prediction, subject, resource_id("dr", subject.sr_uid), obs_ids))
    base = base_url.rstrip("/")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in resources
        ],
    }
    validate(bundle)
    return bundle
