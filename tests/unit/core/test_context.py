"""core.context: updates meeting stored resources, A40 merges, the order join, the job context."""

from __future__ import annotations

import doctest
from datetime import date

import pytest

import core.acks
import core.charsets
import core.context
import core.escapes
import core.fhir
import core.hl7
import core.v2types
from core.context import (
    ContextUpdate,
    OrderIndex,
    PatientMerge,
    StudyContext,
    choose_order,
    merge_patients,
    merge_resource,
    rebind_patient,
    study_context,
)
from core.types import CodedTerm, Priority


@pytest.mark.parametrize(
    "module",
    [core.acks, core.charsets, core.context, core.escapes, core.fhir, core.hl7, core.v2types],
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0


def test_a_thin_update_keeps_what_it_does_not_carry():
    stored = {"resourceType": "Patient", "id": "p", "birthDate": "1970-06-15", "gender": "female"}
    merged = merge_resource(stored, {"resourceType": "Patient", "id": "p", "gender": "other"})
    assert merged == {**stored, "gender": "other"}
    assert stored["gender"] == "female"  # the stored copy is not changed in place


def test_rebinding_moves_every_reference_to_the_known_patient():
    update = ContextUpdate(
        resources=(
            {"resourceType": "Patient", "id": "new"},
            {"resourceType": "ServiceRequest", "id": "s", "subject": {"reference": "Patient/new"}},
        ),
        patient_keys=(("k", "new"),),
        encounters=(("e", "new"),),
        orders=(OrderIndex("s", "a", "", "new", "", "", "active"),),
    )
    out = rebind_patient(update, "new", "old")
    assert [r["id"] for r in out.resources] == ["old", "s"]
    assert out.resources[1]["subject"] == {"reference": "Patient/old"}
    assert out.patient_keys == (("k", "old"),) and out.encounters == (("e", "old"),)
    assert out.orders[0].patient_id == "old"


def test_merge_links_both_patients_per_fhir_r4():
    prior, survivor = merge_patients(
        {"resourceType": "Patient", "id": "p1", "active": True},
        {"resourceType": "Patient", "id": "p2"},
        PatientMerge("p1", ("k1",), "p2"),
    )
    assert prior["active"] is False
    assert prior["link"] == [{"other": {"reference": "Patient/p2"}, "type": "replaced-by"}]
    assert survivor["link"] == [{"other": {"reference": "Patient/p1"}, "type": "replaces"}]
    again = merge_patients(prior, survivor, PatientMerge("p1", ("k1",), "p2"))[1]
    assert again["link"] == survivor["link"]  # a re-sent A40 adds nothing


def order(day, status="active", rid="s"):
    return OrderIndex(rid, "a", "", "p", "", day, status)


def test_patient_and_date_join_picks_the_closest_live_order():
    candidates = [
        (order("2025-03-03", rid="far"), 1.0),
        (order("2025-03-01", rid="near"), 1.0),
        (order("2025-03-01", "revoked", rid="cancelled"), 9.0),
    ]
    assert choose_order(candidates, date(2025, 3, 1), 2).service_request_id == "near"
    assert choose_order(candidates, date(2025, 3, 10), 2) is None
    assert choose_order(candidates, None, 2) is None
    tie = [(order("2025-03-01", rid="old"), 1.0), (order("2025-03-01", rid="new"), 2.0)]
    assert choose_order(tie, date(2025, 3, 1), 0).service_request_id == "new"


SR = {
    "resourceType": "ServiceRequest",
    "id": "sr-1",
    "priority": "stat",
    "code": {
        "coding": [{"system": "http://loinc.org", "code": "36554-4", "display": "XR Chest 2 Views"}],
        "text": "XR Chest 2 Views",
    },
    "reasonCode": [
        {
            "coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "R07.4", "display": "Chest pain"}],
            "text": "Acute chest pain",
        }
    ],
}
PATIENT = {"resourceType": "Patient", "id": "pat-1", "birthDate": "1970-06-15", "gender": "female"}
ENCOUNTER = {
    "resourceType": "Encounter",
    "id": "enc-1",
    "class": {"code": "EMER"},
    "location": [{"location": {"display": "ED BAY3"}}],
}


def test_study_context_carries_clinical_facts_and_no_identifiers():
    ctx = study_context("accession", PATIENT, SR, ENCOUNTER, date(2025, 3, 1))
    assert (ctx.age_years, ctx.sex, ctx.indication) == (54, "female", "Acute chest pain")
    assert ctx.indication_codes == (CodedTerm("R07.4", "I10", "Chest pain"),)
    assert ctx.procedure == CodedTerm("36554-4", "LN", "XR Chest 2 Views")
    assert (ctx.priority, ctx.encounter_class, ctx.location) == ("stat", "EMER", "ED BAY3")
    assert ctx.service_request == "ServiceRequest/sr-1" and ctx.patient == "Patient/pat-1"
    assert StudyContext.from_json(ctx.to_json()) == ctx


@pytest.mark.parametrize(
    ("priority", "encounter_class", "lane"),
    [
        ("stat", "AMB", Priority.STAT),
        ("asap", "AMB", Priority.URGENT),
        ("routine", "EMER", Priority.URGENT),
        ("stat", "EMER", Priority.STAT),
        ("routine", "IMP", Priority.ROUTINE),
    ],
)
def test_stat_orders_and_the_ed_go_to_the_high_priority_lane(priority, encounter_class, lane):
    ctx = StudyContext("accession", "ServiceRequest/s", "", priority=priority, encounter_class=encounter_class)
    assert ctx.lane == lane


def test_context_without_patient_or_encounter():
    ctx = study_context("patient+date", None, {"id": "s"}, None, date(2025, 1, 1))
    assert ctx.age_years is None and ctx.patient == "" and ctx.priority == "routine"
