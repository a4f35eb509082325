"""core.v2intake: one frame decided before the store, in the order HL7 v2.5 2.9.2.1 checks it
(AR for what is not a message we take, AE naming the field for a message that breaks a rule),
and the mapper's memory of resources that validated."""

from __future__ import annotations

import pickle
from collections import OrderedDict

import pytest

from core.errors import MessageInvalid
from core.hl7 import parse_message
from core.v2fhir import VALIDATED_MAX, V2FhirMapper
from core.v2intake import Intake, IntakeRules, intake_of
from tests.hl7_messages import adt, orm

RULES = IntakeRules(b"test-key", ("2.5.1",), ("P",), 4096, 64, {"HOSP": "http://hosp.example/mrn"})
MAPPER = RULES.mapper()


def decide(raw: bytes, *, oversized: bool = False) -> Intake:
    return intake_of(raw, len(raw) * (100 if oversized else 1), oversized, RULES, MAPPER)


def test_a_supported_message_is_mapped_with_its_content_digest():
    raw = orm("I1").encode()
    got = decide(raw)
    assert (got.rejected, got.error) == (False, None)
    assert got.header is not None and got.header.control_id == "I1"
    assert got.digest == parse_message(raw).digest
    assert got.update == MAPPER.map(parse_message(raw))
    assert pickle.loads(pickle.dumps(got)) == got  # it crosses to the listener's process


def test_an_oversized_frame_is_rejected_naming_the_limit_and_still_addressed():
    got = decide(adt("A01", "BIG").encode(), oversized=True)
    assert got.rejected and got.error is not None and got.update is None
    assert got.error.code == "102" and "hl7.listener.max_message_bytes" in got.error.text
    assert got.header is not None and got.header.control_id == "BIG"


@pytest.mark.parametrize(
    ("raw", "code", "location"),
    [
        (b"HELLO", "100", "MSH^1"),
        (adt("A01", "V1", version="2.9").encode(), "203", "MSH^1^12"),
        (adt("A99", "T1").encode(), "201", "MSH^1^9"),
    ],
)
def test_what_is_not_a_message_we_take_is_rejected(raw, code, location):
    got = decide(raw)
    assert got.rejected and got.error is not None
    assert (got.error.code, got.error.location) == (code, location)


def test_a_field_over_the_limit_is_stored_and_answered_ae_naming_it():
    got = decide(adt("A01", "F1", name="X" * 100).encode())
    assert not got.rejected and got.update is None and got.error is not None
    assert got.error.location.startswith("PID^1^5")


def test_bytes_that_do_not_decode_are_stored_and_answered_ae():
    raw = b"MSH|^~\\&|A|HOSP|C|D|||ADT^A01|c7|P|2.5.1||||||UTF-8\rPID|1||X1||DOE\xff^JANE\r"
    got = decide(raw)
    assert not got.rejected and got.update is None and got.error is not None
    assert (got.error.code, got.error.location) == ("102", "PID^1^5")


def test_the_mapper_remembers_valid_resources_but_never_an_invalid_one():
    mapper = V2FhirMapper(b"k")
    good = {"resourceType": "Location", "id": "loc-1", "name": "ED"}
    bad = {"resourceType": "Location", "id": "loc-2", "name": ""}
    mapper._check(good, "C1")
    assert repr(good) in mapper._valid
    for _ in range(2):  # an invalid resource is checked (and refused) every time
        with pytest.raises(MessageInvalid) as caught:
            mapper._check(bad, "C2")
        assert caught.value.error_code == "207" and "Location.name" in caught.value.reason
    assert repr(bad) not in mapper._valid


def test_the_mapper_forgets_the_oldest_valid_resource_first():
    mapper = V2FhirMapper(b"k")
    mapper._valid = OrderedDict((f"r{i}", None) for i in range(VALIDATED_MAX))
    mapper._check({"resourceType": "Location", "id": "loc-9"}, "C9")
    assert len(mapper._valid) == VALIDATED_MAX and "r0" not in mapper._valid and "r1" in mapper._valid
