"""core.acks: ACK codes (HL7 v2.5 2.9.2 original, 2.9.3 enhanced mode) and ACK text.

Our ACKs are read back with hl7apy, an implementation independent of the python-hl7 parser
the listener uses, so a malformed ACK cannot pass by agreeing with itself.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hl7apy.parser import parse_message as hl7apy_parse

from core.acks import AckError, Disposition, ack_codes, build_ack
from core.hl7 import parse_message
from tests.hl7_messages import orm

AT = datetime(2025, 3, 1, 10, 30, tzinfo=UTC)
HEADER = parse_message(orm().encode()).header


def ack(code, header=HEADER, error=None):
    return build_ack(code, header, application="PACSAI", facility="HOSP", control_id="ACK1", at=AT, error=error)


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        (Disposition.APPLIED, "AA"),
        (Disposition.DUPLICATE, "AA"),
        (Disposition.INVALID, "AE"),
        (Disposition.REJECTED, "AR"),
        (Disposition.FAILED, "AE"),
    ],
)
def test_original_mode_sends_one_application_ack(disposition, expected):
    assert ack_codes(HEADER, disposition) == (expected,)
    assert ack_codes(None, disposition) == (expected,)


@pytest.mark.parametrize(
    ("msh15", "msh16", "disposition", "expected"),
    [
        ("AL", "NE", Disposition.APPLIED, ("CA",)),
        ("AL", "AL", Disposition.APPLIED, ("CA", "AA")),
        ("AL", "ER", Disposition.INVALID, ("CA", "AE")),
        ("AL", "ER", Disposition.APPLIED, ("CA",)),
        ("ER", "AL", Disposition.APPLIED, ("AA",)),
        ("ER", "NE", Disposition.REJECTED, ("CR",)),
        ("ER", "NE", Disposition.FAILED, ("CE",)),
        ("SU", "NE", Disposition.FAILED, ()),
        ("NE", "NE", Disposition.APPLIED, ()),
        ("", "AL", Disposition.DUPLICATE, ("AA",)),
        # Issue #16, 9: MSH-16 empty in enhanced mode is HL7's default, AL (always).
        ("AL", "", Disposition.INVALID, ("CA", "AE")),
        ("AL", "", Disposition.APPLIED, ("CA", "AA")),
        ("AL", "", Disposition.CONFLICT, ("CA", "AE")),
        # A value outside table 0155 must not silence the frame: it is read as AL.
        ("0", "0", Disposition.REJECTED, ("CR", "AR")),
        ("NE", "XX", Disposition.APPLIED, ("AA",)),
    ],
)
def test_enhanced_mode_follows_table_0155(msh15, msh16, disposition, expected):
    header = replace(HEADER, accept_ack_type=msh15, application_ack_type=msh16)
    assert ack_codes(header, disposition) == expected


def test_ack_swaps_sender_and_echoes_control_id():
    msg = hl7apy_parse(ack("AA"), find_groups=False)
    msh = msg.msh
    assert (msh.msh_3.value, msh.msh_4.value) == ("PACSAI", "HOSP")
    assert (msh.msh_5.value, msh.msh_6.value) == ("RIS", "HOSP")
    assert msh.msh_9.value == "ACK^O01^ACK" and msh.msh_10.value == "ACK1"
    assert (msh.msh_11.value, msh.msh_12.value) == ("P", "2.5.1")
    assert msh.msh_7.value == "20250301103000+0000"
    assert (msg.msa.msa_1.value, msg.msa.msa_2.value) == ("AA", "ORM0001")


def test_ae_carries_an_err_segment_with_location_code_and_text():
    text = "PID-3: missing; expected at least one patient identifier (CX.1)"
    msg = hl7apy_parse(ack("AE", error=AckError("101", text, "PID^1^3")), find_groups=False)
    msg.validate()  # hl7apy's structure check of ACK / v2.5.1
    err = msg.err
    assert err.err_2.value == "PID^1^3"
    assert err.err_3.value == "101^Required field missing^HL70357"
    assert err.err_4.value == "E" and err.err_8.value == text
    assert msg.msa.msa_3.value == text[:80]


def test_pre_2_5_acks_use_err_1():
    header = replace(HEADER, version="2.3")
    text = ack("AR", header, AckError("200", "MSH-9: got ORU", "MSH^1^9"))
    assert "\rERR|MSH^1^9^200&Unsupported message type&HL70357\r" in text
    assert "|ACK|" in text.split("\r")[0]  # MSH-9 without a structure before v2.3.1


def test_values_from_the_request_are_escaped():
    header = replace(HEADER, control_id="A|B")
    text = ack("AE", header, AckError("102", "got 'x^y'"))
    assert "MSA|AE|A\\F\\B|got 'x\\S\\y'" in text


def test_ar_for_an_unreadable_message_still_answers():
    msg = hl7apy_parse(ack("AR", None, AckError("102", "character 0x00 at offset 0")), find_groups=False)
    assert msg.msa.msa_1.value == "AR" and msg.msa.msa_2.value == ""


def test_a_warning_goes_with_aa_as_an_err_of_severity_w():
    """Issue #16, 9: an optional field we could not use is reported, the message applied."""
    warning = AckError("103", "PV1-2: got 'Z'; ignored", "PV1^1^2", "W")
    msg = hl7apy_parse(ack("AA", error=warning), find_groups=False)
    assert msg.msa.msa_1.value == "AA"
    assert (msg.err.err_2.value, msg.err.err_4.value) == ("PV1^1^2", "W")
    assert msg.err.err_3.value == "103^Table value not found^HL70357"
