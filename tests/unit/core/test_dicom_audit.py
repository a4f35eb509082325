"""DICOM audit messages: each event type's mapping, the PS3.15 A.5.1 schema's element rules,
and that nothing but UIDs, codes and keyed hashes leaves in them."""

from __future__ import annotations

import base64
import binascii
import xml.etree.ElementTree as ET
from datetime import datetime

import pytest

from core.audit import AuditEntry
from core.dicom_audit import EVENTS, AuditSource, audit_message, spec_for
from core.types import AuditEventType

SOURCE = AuditSource("pacsai-test", "bridge.example", "SITE-1")
STUDY, SOP, PATIENT_KEY = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.1.2", "0123456789abcdef"

# The element rules of the DICOM audit message schema (PS3.15 A.5.1, RELAX NG): per element,
# its allowed attributes (required ones marked) and its children, in order, with their counts.
_CODED = {"csd-code": True, "codeSystemName": True, "displayName": False, "originalText": True}
_RULES: dict[str, tuple[dict[str, bool], list[tuple[str, str]]]] = {
    "AuditMessage": (
        {},
        [
            ("EventIdentification", "1"),
            ("ActiveParticipant", "+"),
            ("AuditSourceIdentification", "1"),
            ("ParticipantObjectIdentification", "*"),
        ],
    ),
    "EventIdentification": (
        {"EventActionCode": False, "EventDateTime": True, "EventOutcomeIndicator": True},
        [("EventID", "1"), ("EventTypeCode", "*"), ("EventOutcomeDescription", "?")],
    ),
    "ActiveParticipant": (
        {
            "UserID": True,
            "AlternativeUserID": False,
            "UserName": False,
            "UserIsRequestor": True,
            "NetworkAccessPointID": False,
            "NetworkAccessPointTypeCode": False,
        },
        [("RoleIDCode", "*"), ("MediaIdentifier", "?")],
    ),
    "AuditSourceIdentification": (
        {"AuditEnterpriseSiteID": False, "AuditSourceID": True},
        [("AuditSourceTypeCode", "*")],
    ),
    "AuditSourceTypeCode": (
        {"csd-code": True, "codeSystemName": False, "displayName": False, "originalText": False},
        [],
    ),
    "ParticipantObjectIdentification": (
        {
            "ParticipantObjectID": True,
            "ParticipantObjectTypeCode": False,
            "ParticipantObjectTypeCodeRole": False,
            "ParticipantObjectDataLifeCycle": False,
            "ParticipantObjectSensitivity": False,
        },
        [
            ("ParticipantObjectIDTypeCode", "1"),
            ("ParticipantObjectName|ParticipantObjectQuery", "1"),
            ("ParticipantObjectDetail", "*"),
            ("ParticipantObjectDescription", "*"),
        ],
    ),
    "ParticipantObjectDetail": ({"type": True, "value": True}, []),
    "ParticipantObjectDescription": (
        {},
        [
            ("MPPS", "*"),
            ("Accession", "*"),
            ("SOPClass", "*"),
            ("ParticipantObjectContainsStudy", "?"),
            ("Encrypted", "?"),
            ("Anonymized", "?"),
        ],
    ),
    "SOPClass": ({"UID": False, "NumberOfInstances": True}, [("Instance", "*")]),
    "Instance": ({"UID": True}, []),
    **{tag: (_CODED, []) for tag in ("EventID", "EventTypeCode", "RoleIDCode", "ParticipantObjectIDTypeCode")},
    **{tag: ({}, []) for tag in ("EventOutcomeDescription", "ParticipantObjectName")},
}
_VALUES = {
    "EventActionCode": {"C", "R", "U", "D", "E"},
    "EventOutcomeIndicator": {"0", "4", "8", "12"},
    "UserIsRequestor": {"true", "false", "1", "0"},
    "NetworkAccessPointTypeCode": {"1", "2", "3", "4", "5"},
    "ParticipantObjectTypeCode": {"1", "2", "3", "4"},
    "ParticipantObjectTypeCodeRole": {str(n) for n in range(1, 27)},
}


def _schema_problems(node: ET.Element, path: str = "") -> list[str]:
    """Where ``node`` breaks the schema's element rules (empty: it follows them)."""
    path = f"{path}/{node.tag}"
    if node.tag not in _RULES:
        return [f"{path}: element not in the schema"]
    attrs, children = _RULES[node.tag]
    problems = [f"{path}@{a}: attribute not allowed" for a in node.attrib if a not in attrs]
    problems += [f"{path}@{a}: required attribute missing" for a, req in attrs.items() if req and a not in node.attrib]
    problems += [f"{path}@{a}={v!r}: value not allowed" for a, v in node.attrib.items() if v not in _VALUES.get(a, {v})]
    if "EventDateTime" in node.attrib:
        datetime.fromisoformat(node.attrib["EventDateTime"])  # xsd:dateTime
    if node.tag == "ParticipantObjectDetail":
        try:
            base64.b64decode(node.attrib.get("value", ""), validate=True)  # xsd:base64Binary
        except binascii.Error:
            problems.append(f"{path}@value: not base64")
    kids, i = list(node), 0
    for names, count in children:
        n = 0
        while i < len(kids) and kids[i].tag in names.split("|"):
            i, n = i + 1, n + 1
        if (count in "1+" and n == 0) or (count in "1?" and n > 1):
            problems.append(f"{path}: {names} occurs {n} times; the schema allows {count}")
    problems += [f"{path}/{k.tag}: child not allowed here (order or name)" for k in kids[i:]]
    for kid in kids:
        problems += _schema_problems(kid, path)
    return problems


def _entry(type_: str, actor: str = "stage:validator", **detail: object) -> AuditEntry:
    return AuditEntry(42, 1_765_000_000.25, type_, actor, STUDY, SOP, 7, {"patient_key": PATIENT_KEY, **detail})


def test_the_structural_check_catches_what_the_schema_refuses():
    """The checker below is only as good as it fails: a missing, a misplaced and a bad value."""
    root = ET.fromstring(audit_message(_entry("validated"), SOURCE))
    assert _schema_problems(root) == []
    root[0].attrib["EventOutcomeIndicator"] = "3"
    root.remove(root.find("AuditSourceIdentification"))
    root.append(ET.Element("Bogus"))
    problems = "\n".join(_schema_problems(root))
    assert "EventOutcomeIndicator='3'" in problems
    assert "AuditSourceIdentification occurs 0 times" in problems
    assert "Bogus" in problems


@pytest.mark.parametrize("event_type", list(AuditEventType))
def test_every_event_type_maps_to_a_schema_valid_message_with_its_table_row(event_type):
    entry = _entry(str(event_type))
    spec = spec_for(entry)  # the table row; API requests refined by status and study
    assert spec == EVENTS[event_type] or event_type == AuditEventType.API_REQUEST
    root = ET.fromstring(audit_message(entry, SOURCE))
    assert _schema_problems(root) == []
    event = root.find("EventIdentification")
    assert event is not None
    assert event.attrib["EventActionCode"] == spec.action
    assert event.attrib["EventOutcomeIndicator"] == spec.outcome
    assert event.attrib["EventDateTime"] == "2025-12-06T05:46:40.250000Z"
    event_id = event.find("EventID")
    assert (
        event_id is not None and event_id.attrib["csd-code"] == spec.code and event_id.attrib["codeSystemName"] == "DCM"
    )
    own = event.find("EventTypeCode")
    assert own is not None and (own.attrib["csd-code"], own.attrib["codeSystemName"]) == (str(event_type), "PACSAI")
    assert (event.find("EventOutcomeDescription") is not None) == (spec.outcome != "0")


def test_the_table_names_every_event_type_and_only_cid_400_events():
    unmapped = {str(t) for t in AuditEventType} - set(EVENTS)
    assert not unmapped, f"map these in core.dicom_audit.EVENTS (else sent as Application Activity): {unmapped}"
    assert {s.code for s in EVENTS.values()} <= {f"1101{n:02d}" for n in range(15)}
    assert {s.action for s in EVENTS.values()} <= set("CRUDE")


def test_an_unknown_event_type_is_application_activity():
    root = ET.fromstring(audit_message(_entry("something_new"), SOURCE))
    assert _schema_problems(root) == []
    event_id = root.find("EventIdentification/EventID")
    assert event_id is not None and event_id.attrib["csd-code"] == "110100"
    assert root.find("EventIdentification").attrib["EventActionCode"] == "E"


def test_the_study_the_instance_and_the_patient_by_keyed_hash_are_participant_objects():
    root = ET.fromstring(audit_message(_entry("instance_received", calling_ae="MODALITY1"), SOURCE))
    study, patient = root.findall("ParticipantObjectIdentification")
    assert study.attrib == {
        "ParticipantObjectID": STUDY,
        "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "3",
    }
    assert study.find("ParticipantObjectIDTypeCode").attrib["csd-code"] == "110180"
    assert study.find("ParticipantObjectDescription/SOPClass/Instance").attrib["UID"] == SOP
    assert patient.attrib["ParticipantObjectID"] == PATIENT_KEY
    assert (patient.attrib["ParticipantObjectTypeCode"], patient.attrib["ParticipantObjectTypeCodeRole"]) == ("1", "1")
    roles = {p.attrib["UserID"]: p.find("RoleIDCode").attrib["csd-code"] for p in root.findall("ActiveParticipant")}
    assert roles == {"pacsai-test": "110152", "MODALITY1": "110153"}  # we are the destination
    source = root.find("AuditSourceIdentification")
    assert source.attrib == {"AuditEnterpriseSiteID": "SITE-1", "AuditSourceID": "pacsai-test"}


def test_no_patient_data_and_no_free_text_from_detail_leaves():
    secret = ["DOE^JANE", "PID-778899", "19700101", "free text with a name"]
    entry = _entry(
        "context_read",
        patient_name=secret[0],
        patient_id=secret[1],
        birth_date=secret[2],
        error=secret[3],
        path=f"/studies?PatientID={secret[1]}",
        purpose="inference",
    )
    message = audit_message(entry, SOURCE)
    decoded = [base64.b64decode(d.attrib["value"]) for d in ET.fromstring(message).iter("ParticipantObjectDetail")]
    for text in [message, *decoded]:
        for value in secret:
            assert value.encode() not in text
    assert b'"inference"' in decoded  # whitelisted codes do leave


def test_a_user_is_the_requestor_and_the_bridge_a_participant_beside_it():
    root = ET.fromstring(audit_message(_entry("quarantine_released", actor="user:alice"), SOURCE))
    user, bridge = root.findall("ActiveParticipant")
    assert (user.attrib["UserID"], user.attrib["UserIsRequestor"]) == ("user:alice", "true")
    assert (bridge.attrib["UserID"], bridge.attrib["UserIsRequestor"]) == ("pacsai-test", "false")
    assert bridge.attrib["NetworkAccessPointID"] == "bridge.example"


@pytest.mark.parametrize(
    ("status", "study", "code", "outcome"),
    [
        (200, "", "110100", "0"),
        (200, STUDY, "110103", "0"),
        (401, STUDY, "110114", "4"),
        (403, "", "110114", "4"),
        (404, STUDY, "110103", "4"),
        (503, "", "110100", "8"),
    ],
)
def test_an_api_request_is_reported_by_what_it_read_and_how_it_ended(status, study, code, outcome):
    entry = AuditEntry(1, 0.0, "api_request", "alice", study, "", None, {"status": status, "method": "GET"})
    spec = spec_for(entry)
    assert (spec.code, spec.outcome) == (code, outcome)
    assert _schema_problems(ET.fromstring(audit_message(entry, SOURCE))) == []


def test_an_entry_without_study_or_patient_has_no_participant_objects():
    entry = AuditEntry(3, 0.0, "api_token_created", "user:admin", "", "", None, {"token_id": "t1"})
    root = ET.fromstring(audit_message(entry, SOURCE))
    assert root.findall("ParticipantObjectIdentification") == []
    assert _schema_problems(root) == []
    assert root.find("EventIdentification/EventID").attrib["csd-code"] == "110113"
