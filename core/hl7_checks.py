"""What a receiver checks of a parsed HL7 v2 message before processing it (HL7 v2.5 2.9.2.1).

``check_supported`` rejects (AR) a message we do not take: MSH-9, MSH-10, MSH-11 or MSH-12
missing or unsupported. ``check_field_sizes`` answers AE for an oversized field, naming it.
Parsing itself is ``core.hl7``.
"""

from __future__ import annotations

from collections.abc import Iterable

from core.errors import MessageInvalid, MessageRejected
from core.hl7 import Hl7Message, MessageHeader

__all__ = ["SUPPORTED_EVENTS", "check_field_sizes", "check_supported"]

SUPPORTED_EVENTS = frozenset(
    {("ADT", "A01"), ("ADT", "A04"), ("ADT", "A08"), ("ADT", "A40"), ("ORM", "O01"), ("OMI", "O23")}
)
"""(MSH-9.1, MSH-9.2) pairs we accept: admit, register, update, merge, and imaging orders."""


def _reject(reason: str, code: str, location: str, subject: str = "") -> MessageRejected:
    return MessageRejected(reason, subject, code, location)


def check_supported(header: MessageHeader, versions: Iterable[str], processing_ids: Iterable[str]) -> None:
    """Check what HL7 v2.5 2.9.2.1 says the receiver checks before processing.

    Raises:
        MessageRejected: MSH-9, MSH-10, MSH-11 or MSH-12 is missing or not supported.
    """
    sid = header.control_id
    if not sid:
        raise _reject("MSH-10: missing; expected a message control ID", "101", "MSH^1^10")
    if not header.message_code:  # a required field missing, not an unsupported type
        raise _reject("MSH-9: missing; expected the message type, e.g. 'ORM^O01'", "101", "MSH^1^9", sid)
    if (header.message_code, header.trigger_event) not in SUPPORTED_EVENTS:
        known = sorted(f"{c}^{t}" for c, t in SUPPORTED_EVENTS)
        code = "200" if header.message_code not in {c for c, _ in SUPPORTED_EVENTS} else "201"
        raise _reject(f"MSH-9: got {header.message_type!r}; expected one of {known}", code, "MSH^1^9", sid)
    accepted = tuple(versions)
    if header.version not in accepted:
        raise _reject(
            f"MSH-12: got {header.version!r}; expected one of {list(accepted)}",
            "203",
            "MSH^1^12",
            sid,
        )
    ids = tuple(processing_ids)
    if header.processing_id not in ids:
        raise _reject(
            f"MSH-11: got {header.processing_id!r}; expected one of {list(ids)}",
            "202",
            "MSH^1^11",
            sid,
        )


def check_field_sizes(message: Hl7Message, max_chars: int) -> None:
    """Reject (AE) a message with an oversized field, naming it.

    Raises:
        MessageInvalid: A field is longer than ``max_chars`` characters.
    """
    for seg in message.segments:
        for n, field in enumerate(seg.fields[1:], start=1):
            if len(field) == 1 and len(field[0]) == 1 and len(field[0][0]) == 1:
                size = len(field[0][0][0])
            else:
                size = sum(len(s) for rep in field for comp in rep for s in comp)
            if size > max_chars:
                raise MessageInvalid(
                    f"{seg.name}-{n}: {size} characters; expected at most {max_chars}",
                    message.header.control_id,
                    "102",
                    seg.loc(n),
                )
