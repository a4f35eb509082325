"""What a receiver checks of a parsed HL7 v2 message before processing it (HL7 v2.5 2.9.2.1).

``check_supported`` rejects (AR) a message we do not take: MSH-9, MSH-10, MSH-11 or MSH-12
missing or unsupported. ``check_field_sizes`` answers AE for an oversized field, naming it.
``check_sender`` rejects (AR) a message from a peer not on ``hl7.senders`` or not addressed to
us (issue 13: a stranger must not merge patients, order STAT studies or take a real message's
control ID first). Parsing itself is ``core.hl7``.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import ip_address, ip_network

from core.config import Hl7Config, Hl7SenderConfig
from core.errors import MessageInvalid, MessageRejected
from core.hl7 import Hl7Message, MessageHeader

__all__ = ["SUPPORTED_EVENTS", "check_field_sizes", "check_sender", "check_supported"]

SENDER_REFUSED = "207"
"""ERR-3 of a refused sender: table 0357 has no "not authorised", and 207 (application
internal error) is what receivers use for a site rule; the ERR text says which rule."""

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


def check_field_sizes(message: Hl7Message, max_chars: int, size: int | None = None) -> None:
    """Reject (AE) a message with an oversized field, naming it.

    Args:
        message: The parsed message.
        max_chars: The field limit.
        size: The message's size in bytes, if known. No field has more characters than
            that (decoding makes no more characters than bytes, resolving escapes makes no
            value longer: ``core.escapes``), so a message no larger than the limit is not
            read field by field (17 µs of the ~0.7 ms that deciding one takes).

    Raises:
        MessageInvalid: A field is longer than ``max_chars`` characters.
    """
    if size is not None and size <= max_chars:
        return
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


def _hd_matches(value: str, expected: str) -> bool:
    """An HD field (``NS^UID^ISO``) names ``expected`` as a whole or by its namespace ID."""
    return value == expected or value.split("^", 1)[0] == expected


def _address_matches(host: str, wanted: str) -> bool:
    try:
        return ip_address(host) in ip_network(wanted, strict=False)
    except ValueError:
        return host == wanted


def _sender_matches(sender: Hl7SenderConfig, host: str, subject: str | None) -> bool:
    if sender.address is not None and not _address_matches(host, sender.address):
        return False
    return sender.subject is None or sender.subject == subject


def peer_refusal(host: str, subject: str | None, cfg: Hl7Config) -> str | None:
    """Why no ``hl7.senders`` entry names this peer (its address, its certificate's subject
    CN): the listener closes such a connection as it opens. ``None``: one does, or there are
    no senders (demo mode only).

    >>> from core.config import Hl7Config
    >>> cfg = Hl7Config(senders=({"address": "10.0.0.0/24", "application": "RIS", "facility": "H"},))
    >>> peer_refusal("10.0.0.7", None, cfg) is None, peer_refusal("10.9.9.9", None, cfg)
    (True, 'peer 10.9.9.9 (subject None): not in hl7.senders')
    """
    if not cfg.senders or any(_sender_matches(s, host, subject) for s in cfg.senders):
        return None
    return f"peer {host} (subject {subject!r}): not in hl7.senders"


def check_sender(header: MessageHeader, host: str, subject: str | None, cfg: Hl7Config) -> None:
    """Refuse (AR) a message whose peer and MSH-3/4 are not one of ``hl7.senders``, or whose
    MSH-5/6 do not name us (``hl7.application`` / ``hl7.facility``). No senders: anyone (demo
    mode only; ``core.exposure`` refuses that on a non-loopback bind).

    Args:
        header: The message's MSH.
        host: The peer's IP address.
        subject: The peer certificate's subject CN; ``None`` without TLS.
        cfg: The ``hl7`` config.

    Raises:
        MessageRejected: The peer or the MSH is not allowed; the reason names the field.
    """
    if not cfg.senders:
        return
    sid = header.control_id
    refusal = peer_refusal(host, subject, cfg)  # the listener closed such a peer's connection already
    if refusal is not None:
        raise _reject(refusal, SENDER_REFUSED, "", sid)
    peers = [s for s in cfg.senders if _sender_matches(s, host, subject)]
    app, fac = header.sending_application, header.sending_facility
    if not any(_hd_matches(app, s.application) and _hd_matches(fac, s.facility) for s in peers):
        raise _reject(
            f"MSH-3/MSH-4: got {app!r}/{fac!r}; not an hl7.senders entry for this peer", SENDER_REFUSED, "MSH^1^3", sid
        )
    if not _hd_matches(header.receiving_application, cfg.application):
        raise _reject(
            f"MSH-5: got {header.receiving_application!r}; expected {cfg.application!r}", SENDER_REFUSED, "MSH^1^5", sid
        )
    if cfg.facility and not _hd_matches(header.receiving_facility, cfg.facility):
        raise _reject(
            f"MSH-6: got {header.receiving_facility!r}; expected {cfg.facility!r}", SENDER_REFUSED, "MSH^1^6", sid
        )
