"""core.v2fhir / core.v2types: HL7 v2 -> FHIR R4, row by row of the HL7 v2-to-FHIR IG.

Each assertion names the IG row it checks (``mappings/segments/HL7 Segment - FHIR R4_
PID[Patient]`` etc., and the concept maps PatientClass, AdministrativeSex, OrderControlCode).
"""

from __future__ import annotations

import pytest

from core.errors import MessageInvalid
from core.fhir import validate
from core.hl7 import parse_message
from core.identifiers import hash_identifier
from core.v2fhir import V2FhirMapper
from core.v2types import fhir_datetime
from tests.hl7_messages import a40, adt, omi, orm

V2 = "http://terminology.hl7.org/CodeSystem/v2-"
KEY = b"test-key"
MAPPER = V2FhirMapper(KEY, {"HOSP": "http://hosp.example/mrn"}, ("IPC-1", "OBR-18"))


def mapped(raw):
    update = MAPPER.map(parse_message(raw.encode()))
    by_type = {}
    for r in update.resources:
        validate(r)  # every resource is valid FHIR R4
        by_type.setdefault(r["resourceType"], []).append(r)
    return update, by_type


def test_pid_maps_to_patient():
    update, res = mapped(adt())
    [patient] = res["Patient"]
    # PID-3 -> identifier (CX[Identifier]: CX.1 value, CX.4 system via the site table, CX.5 type)
    assert patient["identifier"] == [
        {
            "value": "MRN123",
            "system": "http://hosp.example/mrn",
            "type": {"coding": [{"system": f"{V2}0203", "code": "MR"}]},
        }
    ]
    # PID-5 -> name (XPN[HumanName]); PID-7 -> birthDate; PID-8 -> gender (AdministrativeSex)
    assert patient["name"] == [{"family": "SYNTHETIC", "given": ["PATIENT", "A"], "prefix": ["DR"], "use": "official"}]
    assert patient["birthDate"] == "1970-06-15" and patient["gender"] == "female"
    assert "address" not in patient and "telecom" not in patient  # minimum necessary
    assert update.patient_keys == ((hash_identifier("MRN123", KEY), patient["id"]),)
    assert "MRN123" not in patient["id"]


def test_pv1_maps_to_encounter_and_location():
    _, res = mapped(adt(patient_class="E"))
    [enc], [loc] = res["Encounter"], res["Location"]
    # PV1-2 -> class (PatientClass[EncounterClass]: E -> v3 ActCode EMER) and status
    assert enc["class"] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": "EMER",
        "display": "emergency",
    }
    assert enc["status"] == "in-progress"
    # PV1-3 -> location[1].location(Location), status active
    assert enc["location"] == [
        {"location": {"reference": f"Location/{loc['id']}", "display": "ED BAY3 BED2 (HOSP)"}, "status": "active"}
    ]
    assert loc["name"] == "ED BAY3 BED2 (HOSP)" and loc["physicalType"]["coding"][0]["code"] == "bd"
    # PV1-7 -> participant ATND; PV1-19 -> identifier VN; PV1-44 -> period.start
    assert enc["participant"][0]["individual"]["display"] == "ANN SYNDOC"
    assert enc["identifier"][0]["value"] == "V789"
    assert enc["identifier"][0]["type"]["coding"][0]["code"] == "VN"
    assert enc["period"] == {"start": "2025-03-01T10:00:00+01:00"}  # MSH-7's offset
    assert enc["subject"] == {"reference": f"Patient/{res['Patient'][0]['id']}"}


@pytest.mark.parametrize(
    ("pv1_2", "code", "status"),
    [("I", "IMP", "in-progress"), ("O", "AMB", "in-progress"), ("P", "PRENC", "planned"), ("U", "U", "unknown")],
)
def test_patient_class_concept_maps(pv1_2, code, status):
    _, res = mapped(adt(patient_class=pv1_2))
    assert res["Encounter"][0]["class"]["code"] == code
    assert res["Encounter"][0]["status"] == status


def test_orc_and_obr_map_to_one_service_request():
    update, res = mapped(orm(priority="S"))
    [sr] = res["ServiceRequest"]
    assert sr["intent"] == "order" and sr["status"] == "active"  # ORC-1 NW -> active
    ids = {i["type"]["coding"][0]["code"]: i["value"] for i in sr["identifier"]}
    assert ids == {"PLAC": "PLC1001", "FILL": "FIL2002", "ACSN": "ACC3003"}  # ORC-2/-3, OBR-18
    # OBR-4 -> code (CWE[CodeableConcept])
    assert sr["code"]["coding"] == [{"code": "36554-4", "display": "XR Chest 2 Views", "system": "http://loinc.org"}]
    assert sr["priority"] == "stat"  # OBR-27.6 / TQ1-9 (table 0485 S)
    # OBR-31 -> reasonCode, CWE.9 original text -> text
    assert sr["reasonCode"] == [
        {
            "coding": [{"code": "R07.4", "display": "Chest pain", "system": "http://hl7.org/fhir/sid/icd-10"}],
            "text": "Acute chest pain, rule out pneumothorax",
        }
    ]
    assert sr["authoredOn"] == "2025-03-01T10:29:00+01:00"  # ORC-9 when ORC-1 is NW
    assert sr["occurrenceDateTime"] == "2025-03-01T10:30:00+01:00"  # OBR-6
    assert sr["requester"]["display"] == "BOB SYNREF"  # ORC-12
    assert sr["encounter"]["reference"].startswith("Encounter/")
    [order] = update.orders
    assert order.accession_key == hash_identifier("ACC3003", KEY)
    assert order.order_date == "2025-03-01" and sr["id"] == order.service_request_id


def test_omi_takes_accession_and_study_uid_from_ipc_and_priority_from_tq1():
    update, res = mapped(omi(accession="ACC4004", study_uid="1.2.3.4", priority="A"))
    [sr] = res["ServiceRequest"]
    acsn = [i for i in sr["identifier"] if i["type"]["coding"][0]["code"] == "ACSN"]
    assert acsn == [
        {
            "type": {"coding": [{"system": f"{V2}0203", "code": "ACSN"}]},
            "value": "ACC4004",
            "system": "http://hosp.example/mrn",
        }
    ]
    assert sr["priority"] == "asap"
    assert sr["occurrenceTiming"] == {"repeat": {"boundsPeriod": {"start": "2025-03-02T09:00:00+01:00"}}}
    assert sr["reasonCode"] == [{"text": "Persistent cough"}]
    assert update.orders[0].study_uid == "1.2.3.4" and "Encounter" not in res


def test_order_control_and_status_concept_maps():
    _, res = mapped(orm().replace("ORC|NW|", "ORC|OC|").replace("|SC|", "||"))
    assert res["ServiceRequest"][0]["status"] == "revoked"
    _, res = mapped(orm().replace("|SC|", "|CM|"))  # ORC-5 wins when valued
    assert res["ServiceRequest"][0]["status"] == "completed"


def test_a40_names_the_prior_patient_merged_into_the_survivor():
    update, res = mapped(a40(survivor="MRN123", prior="MRN999"))
    [merge] = update.merges
    assert merge.survivor_id == res["Patient"][0]["id"]
    assert merge.prior_keys == (hash_identifier("MRN999", KEY),)
    assert merge.prior_id != merge.survivor_id


@pytest.mark.parametrize(
    ("raw", "code", "where", "words"),
    [
        (adt().replace("MRN123^^^HOSP^MR", ""), "101", "PID^1^3", "PID-3: missing"),
        (adt().replace("|19700615|", "|19701345|"), "102", "PID^1^7", "PID-7: got '19701345'"),
        # Arabic-Indic digits matched \d and reached FHIR validation: AE 207 naming no field
        (adt().replace("|19700615|", "|\u0661\u0669\u0667\u0660\u0660\u0661\u0660\u0661|"), "102", "PID^1^7", "PID-7"),
        (adt().replace("|19700615|F", "|19700615|Q"), "103", "PID^1^8", "PID-8: got 'Q'"),
        (adt().replace("PV1|1|E|", "PV1|1|Z|"), "103", "PV1^1^2", "table 0004"),
        (adt().split("PV1")[0], "100", "PV1", "PV1: segment missing"),
        # issue #16, 9: ORM^O01 has no IPC; the accession is missing in OBR-18
        (orm().replace("|ACC3003|", "||"), "101", "OBR^1^18", "accession number"),
        (omi(accession=""), "101", "IPC^1^1", "accession number"),
        (orm(priority="X"), "103", "OBR^1^27", "table 0485"),
        (orm().replace("36554-4^XR Chest 2 Views^LN", ""), "101", "OBR^1^4", "OBR-4: missing"),
        (a40().split("MRG")[0], "100", "MRG", "expected one MRG after each PID"),
    ],
)
def test_rule_violations_name_field_value_and_expectation(raw, code, where, words):
    with pytest.raises(MessageInvalid) as err:
        MAPPER.map(parse_message(raw.encode()))
    assert (err.value.error_code, err.value.location) == (code, where)
    assert words in err.value.reason


def test_accession_fields_are_configurable():
    mapper = V2FhirMapper(KEY, {}, ("ORC-3",))
    update = mapper.map(parse_message(orm().encode()))
    assert update.orders[0].accession_key == hash_identifier("FIL2002", KEY)


@pytest.mark.parametrize(
    ("dtm", "offset", "expected"),
    [
        ("20250301", None, "2025-03-01"),
        ("202503", None, "2025-03"),
        ("20250301103000", "+0100", "2025-03-01T10:30:00+01:00"),
        ("20250301103000.25-0500", None, "2025-03-01T10:30:00.25-05:00"),
        ("2025030110", "+0000", "2025-03-01T10:00:00+00:00"),
    ],
)
def test_dtm_to_fhir_datetime(dtm, offset, expected):
    assert fhir_datetime(dtm, offset) == expected


@pytest.mark.parametrize("bad", ["2025-03-01", "20250231", "20250301250000", "abc", ""])
def test_bad_dtm_is_refused(bad):
    with pytest.raises(ValueError):
        fhir_datetime(bad)


# ----------------------------------------------------------------- patient identity (issue #16, 1)
def identity(raw, mapper=MAPPER):
    """The Patient id and the identity keys a message maps to."""
    update = mapper.map(parse_message(raw.encode()))
    [patient] = [r for r in update.resources if r["resourceType"] == "Patient"]
    return patient["id"], set(update.identity_keys), patient


def test_patient_identity_is_id_assigning_authority_and_type():
    from_a = identity(adt(pid3="4711^^^A^MR"))
    from_b = identity(adt(pid3="4711^^^B^MR"))
    other_type = identity(adt(pid3="4711^^^A^PI"))
    assert len({from_a[0], from_b[0], other_type[0]}) == 3
    assert not from_a[1] & from_b[1] and not from_a[1] & other_type[1]
    assert identity(adt("A08", "ADT0002", pid3="4711^^^A^MR"))[:2] == from_a[:2]


def test_an_id_without_authority_is_scoped_by_the_sending_facility():
    north = identity(adt(pid3="4711", facility="NORTH"))
    south = identity(adt(pid3="4711", facility="SOUTH"))
    assert north[0] != south[0] and not north[1] & south[1]


def test_sending_facilities_can_name_the_authority_of_bare_ids():
    mapper = V2FhirMapper(
        KEY, {"HOSP": "http://hosp.example/mrn"}, default_authorities={"NORTH": "HOSP", "SOUTH": "HOSP"}
    )
    north = identity(adt(pid3="4711^^^^MR", facility="NORTH"), mapper)
    south = identity(adt(pid3="4711^^^^MR", facility="SOUTH"), mapper)
    explicit = identity(adt(pid3="4711^^^HOSP^MR", facility="WEST"), mapper)
    assert north[:2] == south[:2] == explicit[:2]
    assert north[2]["identifier"][0]["system"] == "http://hosp.example/mrn"


@pytest.mark.parametrize(
    ("pid3", "system"),
    [
        ("4711^^^NORTH&1.2.840.99&ISO^MR", "urn:oid:1.2.840.99"),
        ("4711^^^&1.2.840.99&ISO^MR", "urn:oid:1.2.840.99"),
        ("4711^^^&A1B2C3D4-0000-4000-8000-000000000001&UUID^MR", "urn:uuid:a1b2c3d4-0000-4000-8000-000000000001"),
    ],
)
def test_the_oid_of_an_assigning_authority_becomes_the_identifier_system(pid3, system):
    """Issue #16, 2: CX.4 ``&OID&ISO`` -> Identifier.system ``urn:oid:<OID>`` (IG CX[Identifier])."""
    _, _, patient = identity(adt(pid3=pid3))
    assert patient["identifier"][0]["system"] == system
    assert patient["identifier"][0]["value"] == "4711"


def test_an_authority_is_the_same_with_or_without_its_namespace_id():
    named = identity(adt(pid3="4711^^^NORTH&1.2.840.99&ISO^MR"))
    unnamed = identity(adt(pid3="4711^^^&1.2.840.99&ISO^MR", facility="ELSEWHERE"))
    assert named[:2] == unnamed[:2]


def test_the_visit_number_keeps_its_authority_oid():
    _, res = mapped(adt(visit="V789^^^VISITS&1.2.840.7&ISO^VN"))
    assert res["Encounter"][0]["identifier"][0]["system"] == "urn:oid:1.2.840.7"


def test_an_optional_pv1_with_an_unknown_patient_class_loses_the_field_not_the_order():
    """Issue #16, 9: PV1 is optional in ORM^O01; its bad PV1-2 is a warning, no Encounter."""
    update, res = mapped(orm(patient_class="Z"))
    assert len(res["ServiceRequest"]) == 1 and "Encounter" not in res
    [warning] = update.warnings
    assert (warning.code, warning.location, warning.severity) == ("103", "PV1^1^2", "W")
    assert "table 0004" in warning.reason


def test_a_bad_patient_class_still_rejects_an_admission():
    with pytest.raises(MessageInvalid) as err:  # PV1 and PV1-2 are required in ADT_A01
        MAPPER.map(parse_message(adt(patient_class="Z").encode()))
    assert (err.value.error_code, err.value.location) == ("103", "PV1^1^2")
