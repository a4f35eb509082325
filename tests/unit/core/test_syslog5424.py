"""RFC 5424 message format and RFC 5425 octet-counting frames."""

from __future__ import annotations

import re

import pytest

from core.syslog5424 import BOM, SdElement, format_message, octet_frame, split_frames, timestamp

# RFC 5424 section 6: HEADER SP STRUCTURED-DATA [SP MSG]
_HEADER = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z) (?P<host>[!-~]{1,255}) "
    rb"(?P<app>[!-~]{1,48}) (?P<proc>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) (?P<sd>-|(\[.*?[^\\]\])+)( (?P<msg>.*))?$",
    re.S,
)


def _message(**overrides):
    args = {
        "facility": 10,
        "severity": 5,
        "at": 1_765_000_000.123456,
        "hostname": "bridge.example",
        "app_name": "pacsai",
        "procid": "4242",
        "msgid": "IHE+RFC-3881",
        "structured": (SdElement("pacsai@32473", (("seq", "17"), ("type", "validated"))),),
        "message": b"<AuditMessage/>",
    }
    return format_message(**(args | overrides))


def test_the_header_fields_are_in_rfc_5424_order_and_the_message_follows_a_bom():
    raw = _message()
    match = _HEADER.match(raw)
    assert match is not None, raw
    assert match["pri"] == b"85"  # authpriv (10) * 8 + notice (5)
    assert match["ts"] == b"2025-12-06T05:46:40.123456Z"
    assert (match["host"], match["app"], match["proc"], match["msgid"]) == (
        b"bridge.example",
        b"pacsai",
        b"4242",
        b"IHE+RFC-3881",
    )
    assert match["sd"] == b'[pacsai@32473 seq="17" type="validated"]'
    assert match["msg"] == BOM + b"<AuditMessage/>"


def test_empty_fields_are_the_nilvalue_and_no_message_means_no_trailing_space():
    raw = _message(hostname="", procid="", structured=(), message=b"")
    assert raw == b"<85>1 2025-12-06T05:46:40.123456Z - pacsai - IHE+RFC-3881 -"


def test_param_values_are_escaped_and_several_elements_follow_each_other():
    sd = (SdElement("a@32473", (("v", 'x"y]z\\'),)), SdElement("b@32473", (("n", "1"),)))
    raw = _message(structured=sd)
    assert b'[a@32473 v="x\\"y\\]z\\\\"][b@32473 n="1"]' in raw
    assert _HEADER.match(raw) is not None


@pytest.mark.parametrize(
    "overrides",
    [
        {"hostname": "two words"},
        {"app_name": "x" * 49},
        {"msgid": "naïve"},
        {"facility": 24},
        {"severity": 8},
        {"structured": (SdElement("bad=id", ()),)},
        {"structured": (SdElement("ok@1", (("sp ace", "v"),)),)},
    ],
)
def test_a_field_that_would_break_the_header_is_refused(overrides):
    with pytest.raises(ValueError, match="syslog"):
        _message(**overrides)


def test_timestamps_are_utc_with_at_most_six_fraction_digits():
    assert timestamp(0.0) == "1970-01-01T00:00:00.000000Z"


def test_octet_frames_count_bytes_and_split_back_across_reads():
    messages = [_message(message="é".encode() * n) for n in (0, 1, 300)]
    stream = b"".join(octet_frame(m) for m in messages)
    assert octet_frame(b"abc") == b"3 abc"
    assert octet_frame("é".encode()) == b"2 \xc3\xa9"
    got, rest = [], b""
    for i in range(0, len(stream), 7):  # TCP may cut anywhere
        frames, rest = split_frames(rest + stream[i : i + 7])
        got += frames
    assert (got, rest) == (messages, b"")


@pytest.mark.parametrize("garbage", [b"<85>1 not framed", b"012 abc", b"12345678901 x", b"abcdefghijklmnop"])
def test_a_stream_that_is_not_octet_counted_is_refused(garbage):
    with pytest.raises(ValueError, match="syslog frame"):
        split_frames(garbage)
