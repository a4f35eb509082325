"""core.hl7: parse and check HL7 v2 messages (HL7 v2.5 chapter 2)."""

from __future__ import annotations

import logging

import pytest

from core.errors import MessageInvalid, MessageRejected
from core.hl7 import escape, parse_message, peek_header
from core.hl7_checks import check_field_sizes, check_supported
from tests.hl7_messages import adt, orm

VERSIONS = ("2.3", "2.5.1")


def test_header_fields_are_read_from_msh():
    msg = parse_message(orm().encode())
    h = msg.header
    assert (h.sending_application, h.sending_facility) == ("RIS", "HOSP")
    assert (h.receiving_application, h.receiving_facility) == ("PACSAI", "HOSP")
    assert (h.message_code, h.trigger_event, h.structure) == ("ORM", "O01", "ORM_O01")
    assert (h.control_id, h.processing_id, h.version) == ("ORM0001", "P", "2.5.1")
    assert h.message_type == "ORM^O01" and not h.enhanced_mode


def test_segments_give_components_repetitions_and_error_locations():
    raw = "MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1||X1^^^H^MR~X2^^^N^NI||DOE^JANE\r"
    pid = parse_message(raw.encode()).first("PID")
    assert pid.reps(3) == (("X1", "", "", "H", "MR"), ("X2", "", "", "N", "NI"))
    assert pid.comps(5) == ("DOE", "JANE") and pid.get(5, 2) == "JANE"
    assert pid.get(3, 1, rep=2) == "X2" and pid.get(40) == "" and pid.loc(3) == "PID^1^3"


def test_escape_sequences_are_resolved():
    raw = "MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1||X\\F\\Y\\S\\Z\r"
    assert parse_message(raw.encode()).first("PID").get(3) == "X|Y^Z"


def test_other_delimiters_are_honoured_and_header_is_canonical():
    raw = "MSH#!*$@#APP!1.2.3!ISO#FAC#C#D###ADT!A01#1#P#2.5\rPID#1##X1!!!H!MR\r"
    msg = parse_message(raw.encode())
    assert msg.header.sending_application == "APP^1.2.3^ISO"
    assert msg.first("PID").get(3, 5) == "MR"


def test_crlf_and_lf_segment_terminators_are_accepted():
    for sep in ("\r\n", "\n"):
        assert parse_message(adt().replace("\r", sep).encode()).first("PV1") is not None


def test_utf8_is_decoded_when_declared():
    raw = ("MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5||||||UNICODE UTF-8\rPID|1||X1||MÜLLER\r").encode()
    assert parse_message(raw).first("PID").get(5) == "MÜLLER"


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        (b"\x00\x01\xffgarbage", "102", "control characters"),
        (b"PID|1||X", "100", "expected an MSH segment first"),
        (b"MSH|^~|A|B", "102", "4 distinct non-alphanumeric"),
        (b"MSH|^^\\&|A|B", "102", "4 distinct non-alphanumeric"),
        (b"MSH|^~\\A|A|B", "102", "4 distinct non-alphanumeric"),
        (b"MSHA^~\\&A", "102", "field separator"),
        (b"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rpid|1", "100", "3-character segment ID"),
    ],
)
def test_unparseable_input_is_rejected_with_a_reason(raw, code, words):
    with pytest.raises(MessageRejected) as err:
        parse_message(raw)
    assert err.value.error_code == code
    assert words in err.value.reason


def test_peek_header_addresses_an_ar_to_a_message_that_failed_later():
    header = peek_header(b"MSH|^~\\&|A|B|C|D|||ZZZ^Q01|c1|P|2.5\rPID|\x00")
    assert header is not None and header.control_id == "c1"
    assert peek_header(b"\x00garbage") is None


@pytest.mark.parametrize(
    ("change", "code", "where"),
    [
        (("ORM^O01^ORM_O01", "ORU^R01^ORU_R01"), "200", "MSH^1^9"),
        (("ORM^O01^ORM_O01", "ORM^O02^ORM_O02"), "201", "MSH^1^9"),
        (("|P|2.5.1", "|P|2.9"), "203", "MSH^1^12"),
        (("|P|2.5.1", "|T|2.5.1"), "202", "MSH^1^11"),
        (("|ORM0001|", "||"), "101", "MSH^1^10"),
        (("ORM^O01^ORM_O01", ""), "101", "MSH^1^9"),  # issue #16, 9: required field missing
    ],
)
def test_unsupported_header_values_are_rejected_per_2_9_2_1(change, code, where):
    msg = parse_message(orm().replace(*change).encode())
    with pytest.raises(MessageRejected) as err:
        check_supported(msg.header, (*VERSIONS, "2.9") if code != "203" else VERSIONS, ("P",))
    assert (err.value.error_code, err.value.location) == (code, where)


def test_supported_messages_pass():
    for raw in (adt("A01"), adt("A04"), adt("A08"), orm()):
        check_supported(parse_message(raw.encode()).header, VERSIONS, ("P",))


def test_an_oversized_field_is_invalid_and_named():
    raw = orm().replace("Acute chest pain", "x" * 5000)
    with pytest.raises(MessageInvalid) as err:
        check_field_sizes(parse_message(raw.encode()), 1000)
    assert err.value.location == "OBR^1^31" and "expected at most 1000" in err.value.reason
    assert not isinstance(err.value, MessageRejected)


def test_escape_round_trips_through_the_parser():
    value = "a|b^c&d~e\\f"
    raw = f"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1||{escape(value)}\r"
    assert parse_message(raw.encode()).first("PID").get(3) == value


def test_blanks_around_values_are_dropped_so_codes_stay_valid_fhir():
    raw = "MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\r\rPID|1|| X1 ^^^H^ MR ||DOE \r"
    pid = parse_message(raw.encode()).first("PID")
    assert pid.comps(3) == ("X1", "", "", "H", "MR") and pid.get(5) == "DOE"


def test_subcomponents_survive_the_parser():
    """Issue #16, 2: CX.4 is an HD; its universal ID and type are subcomponents."""
    raw = "MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1||4711^^^HOSP&1.2.840.1&ISO^MR~9^^^&2.16.1&ISO\r"
    pid = parse_message(raw.encode()).first("PID")
    assert pid.subs(3, 4) == ("HOSP", "1.2.840.1", "ISO")
    assert pid.subs(3, 4, rep=2) == ("", "2.16.1", "ISO")
    assert pid.subs(3, 9) == () and pid.subs(7, 1) == ()
    assert pid.get(3, 4, sub=2) == "1.2.840.1"


# ------------------------------------------------- segment separators (issue #16, 3)
@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_msh18_is_read_from_the_msh_segment_whatever_the_separator(sep):
    raw = sep.join(["MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5||||||UNICODE UTF-8", "PID|1||X1||MÜLLER^JÖRG", ""]).encode(
        "utf-8"
    )
    assert parse_message(raw).first("PID").get(5, 2) == "JÖRG"


def test_the_next_segment_is_never_taken_for_msh18():
    raw = b"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\nPID|1||X1||DOE^JANE|MAIDEN|19700101|F\n"
    msg = parse_message(raw)
    assert msg.header.charset == "" and msg.first("PID").get(6) == "MAIDEN"


# ----------------------------------------------------------- character sets (issue #16, 4)
@pytest.mark.parametrize(
    ("label", "codec"),
    [
        ("UNICODE UTF-8", "utf-8"),
        ("UTF-8", "utf-8"),
        ("UNICODE", "utf-8"),
        ("utf8", "utf-8"),
        ("8859/1", "latin-1"),
        ("ISO-8859-1", "latin-1"),
        ("ISO_IR 100", "latin-1"),
        ("ISO IR100", "latin-1"),
        ("Latin1", "latin-1"),
        ("8859/15", "iso8859-15"),
        ("WINDOWS-1252", "cp1252"),
        ("8859/2", "iso8859-2"),
        ("ISO-8859-2", "iso8859-2"),
    ],
)
def test_common_character_set_labels_are_accepted(label, codec):
    name = "MÜLLER^JÖRG" if codec != "iso8859-2" else "NOWAK^ŁUKASZ"
    raw = (f"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5||||||{label}\rPID|1||X1||{name}\r").encode(codec)
    msg = parse_message(raw)
    assert msg.problem is None and msg.first("PID").get(5, 2) == name.split("^")[1]


@pytest.mark.parametrize("label", ["ASCII", "US-ASCII", "KOI8-R", "NO-SUCH-CHARSET"])
def test_a_plain_ascii_message_is_taken_whatever_its_label(label):
    raw = f"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5||||||{label}\rPID|1||X1||DOE\r".encode()
    assert parse_message(raw).problem is None


def test_bytes_that_do_not_decode_are_an_error_in_the_field_not_a_reject():
    raw = b"MSH|^~\\&|A|B|C|D|||ADT^A01|c7|P|2.5||||||UTF-8\rPID|1||X1||DOE\xff^JANE\r"
    msg = parse_message(raw)  # no MessageRejected: the sender must fix it, not drop it
    assert msg.header.control_id == "c7"
    assert (msg.problem.code, msg.problem.location) == ("102", "PID^1^5")
    assert "0xFF" in msg.problem.reason and "UTF-8" in msg.problem.reason


def test_an_unknown_label_on_non_ascii_bytes_is_an_error_naming_msh18():
    raw = "MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5||||||KLINGON\rPID|1||X1||MÜLLER\r".encode()
    problem = parse_message(raw).problem
    assert (problem.code, problem.location) == ("103", "MSH^1^18")
    assert "KLINGON" in problem.reason


def test_a_utf8_byte_order_mark_before_msh_is_dropped():
    raw = "\ufeffMSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1||X1||MÜLLER\r".encode("utf-8")
    assert parse_message(raw).first("PID").get(5) == "MÜLLER"


def test_the_content_digest_ignores_separators_and_msh7_only():
    """Issue #16, 5: what makes a re-sent message 'the same' (MSH-7 is the time of sending)."""
    base = parse_message(orm().encode()).digest
    assert len(base) == 64
    assert parse_message(orm().replace("\r", "\r\n").encode()).digest == base
    assert parse_message(orm(stamp="20250302000000+0100").encode()).digest == base
    assert parse_message(orm(priority="R").encode()).digest != base
    assert parse_message(orm(control="OTHER").encode()).digest != base


# ------------------------------------------------------ broken MSH-2 (issue #16, 7)
@pytest.mark.parametrize("msh2", ["^^\\&", "^~\\\\&", "^~", "", "^~\\&AB"])
def test_msh10_and_msh9_are_recovered_when_msh2_is_broken(msh2):
    raw = orm("CTL9").replace("MSH|^~\\&|", f"MSH|{msh2}|", 1).replace("\r", "\n").encode()
    with pytest.raises(MessageRejected):
        parse_message(raw)
    header = peek_header(raw)
    assert header is not None
    assert (header.control_id, header.message_code, header.trigger_event) == ("CTL9", "ORM", "O01")
    assert (header.sending_application, header.version) == ("RIS", "2.5.1")


def test_nothing_is_guessed_from_a_header_without_a_usable_field_separator():
    assert peek_header(b"MSHA^~\\&ARISAHOSPAAAAAADT^A01AC1APA2.5\rPID|1") is None
    assert peek_header(b"\x0b\x00garbage") is None


# ------------------------------------------------------- no PHI in logs (issue #16, 8)
@pytest.mark.parametrize(
    "address",
    [
        "42 ELM STREET \\Q\\ FLAT 7^^SPRINGFIELD",  # an escape sequence nobody defined
        "42 ELM STREET \\C2842\\ FLAT 7^^SPRINGFIELD",  # a character set switch we cannot do
        "42 ELM STREET \\XZZ\\ FLAT 7^^SPRINGFIELD",  # hex that is not hex
        "42 ELM STREET \\ FLAT 7^^SPRINGFIELD",  # a stray escape character, never closed
    ],
)
def test_odd_escapes_keep_the_text_and_log_nothing_of_it(address, caplog):
    caplog.set_level(logging.DEBUG)  # the root logger: every library's records reach caplog
    raw = f"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1||X1||DOE||||||{address}\r"
    pid = parse_message(raw.encode()).first("PID")
    assert pid.get(11).startswith("42 ELM STREET") and pid.get(11).endswith("FLAT 7")
    assert pid.get(11, 3) == "SPRINGFIELD"
    assert "ELM" not in caplog.text and "SPRINGFIELD" not in caplog.text


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        ("A\\X42\\C", "ABC"),
        ("LINE1\\.br\\LINE2", "LINE1\nLINE2"),
        ("C:\\E\\TEMP", "C:\\TEMP"),
        ("\\X4DC39C\\LLER", "MÜLLER"),
        ("50\\T\\50", "50&50"),
        # formatting counts make no value longer than it was received (stop 31)
        ("A\\.sk3\\B", "A   B"),  # honoured: no longer than the sequence
        ("A\\.sp2\\B", "A\n\nB"),
        ("A\\.sk50\\B", "A" + " " * 7 + "B"),  # cut to the sequence's own 7 characters
        ("A\\.sk99999999\\B", "A" + " " * 13 + "B"),  # was 100 MB of blanks
        ("A\\.sp\u00b2\\B", "A\\.sp\u00b2\\B"),  # not ASCII digits (int() refused it): kept as received
        ("A\\.sp-2\\B", "A\nB"),
        ("A\\.in+4\\B", "AB"),
    ],
)
def test_escape_sequences_of_chapter_2_7(escaped, plain):
    raw = f"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1||X1||{escaped}\r"
    assert parse_message(raw.encode()).first("PID").get(5) == plain


# ------------------------------------------------------------- smaller ones (issue #16, 9)
def test_highlighting_is_dropped_and_the_highlighted_text_kept():
    raw = "MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1||X1||\\H\\DOE\\N\\^JANE\r"
    assert parse_message(raw.encode()).first("PID").comps(5) == ("DOE", "JANE")


def test_a_second_msh_in_one_frame_is_rejected():
    two = (adt("A01", "ONE") + adt("A01", "TWO")).encode()
    with pytest.raises(MessageRejected) as err:
        parse_message(two)
    assert (err.value.error_code, err.value.location) == ("100", "MSH^2")
    assert "one message per MLLP frame" in err.value.reason


# ------------------------------------------- formatting counts (a value never grows, stop 31)
def test_a_count_of_thousands_of_digits_is_read_not_raised():
    escaped = "A\\.sk" + "9" * 5000 + "\\B"  # int() refuses strings of over 4,300 digits
    raw = f"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1||X1||{escaped}\r"
    value = parse_message(raw.encode()).first("PID").get(5)
    assert value == "A" + " " * (len(escaped) - 2) + "B"


def test_no_field_has_more_characters_than_the_message_has_bytes():
    """What lets ``check_field_sizes`` skip a message no larger than the limit: with every
    kind of escape at its longest, the field-by-field check passes at a limit of the
    message's size, and the skip answers the same as the full check either side of it."""
    busy = "\\.sk999\\\\.sp12\\\\X4DC39C\\\\F\\\\.br\\\\H\\x\\N\\" * 40
    raw = f"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1||X1||{busy}^{busy}~{busy}\r".encode()
    message = parse_message(raw)
    check_field_sizes(message, len(raw))  # read field by field: nothing over the size
    field = sum(len(s) for rep in message.first("PID").fields[5] for comp in rep for s in comp)
    check_field_sizes(message, field, len(raw) + 1)  # over the limit by size: read, and it fits
    with pytest.raises(MessageInvalid):
        check_field_sizes(message, field - 1, len(raw))
