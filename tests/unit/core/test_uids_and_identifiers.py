from __future__ import annotations

import re

from core.identifiers import DEMO_KEY, hash_identifier
from core.uids import output_uid, uid_from_parts

UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def test_output_uid_is_deterministic_and_order_free():
    a = output_uid("1.2.3", "cxr", "1.0", ["1.2.3.2", "1.2.3.1"], "sr")
    b = output_uid("1.2.3", "cxr", "1.0", ["1.2.3.1", "1.2.3.2"], "sr")
    assert a == b
    assert UID.match(a) and len(a) <= 64


def test_output_uid_changes_with_each_part():
    base = output_uid("1.2.3", "cxr", "1.0", ["1"], "sr")
    assert base != output_uid("1.2.4", "cxr", "1.0", ["1"], "sr")
    assert base != output_uid("1.2.3", "cxr", "1.1", ["1"], "sr")
    assert base != output_uid("1.2.3", "cxr", "1.0", ["1", "2"], "sr")
    assert base != output_uid("1.2.3", "cxr", "1.0", ["1"], "pm")


def test_parts_cannot_be_confused_by_concatenation():
    assert uid_from_parts("ab", "c") != uid_from_parts("a", "bc")


def test_hash_identifier_is_keyed_and_hides_the_value():
    h = hash_identifier("PAT123", DEMO_KEY)
    assert h != "PAT123" and len(h) == 16 and "PAT123" not in h
    assert hash_identifier("PAT123", b"other-key") != h
