"""HL7 v2 acknowledgements: which ACK codes a message gets, and the ACK text itself.

Pure: the clock and the ACK's own control ID are passed in.

- Original mode (MSH-15 and MSH-16 both empty; HL7 v2.5 2.9.2): one application ACK. ``AA``
  stored and applied (or a re-sent message applied before), ``AE`` stored but it broke a rule
  (``ERR`` says which), reused an applied message's control ID with other content (ERR 205),
  or we could not store it (resend later), ``AR`` it cannot be taken as a
  message, or its type, version or processing ID is not supported (do not resend unchanged).
- Enhanced mode (either valued; 2.9.3): an accept ACK when MSH-15 asks for it (``CA``
  committed to safe storage, ``CR`` rejected, ``CE`` could not store), then the application
  ACK when MSH-16 asks for it, on the same connection (we have no return link). Table 0155:
  ``AL`` always, ``NE`` never, ``ER`` on error or reject only, ``SU`` on success only. Both
  are required in enhanced mode. An empty MSH-16 is read as ``AL``: the application ACK is
  what original mode always sends, and the sender learns of every application error
  (issue #16; HAPI's receiver does the same). An empty MSH-15 is read as ``NE``: accept ACKs
  exist only where they are asked for. A value outside table 0155 is read as ``AL``.
- Warnings: an ``AA`` may carry an ``ERR`` of severity ``W`` (HL7 table 0516) naming an
  optional field that was ignored; pre-v2.5 ERR has no severity, so there it is left out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from core.hl7 import Issue, MessageHeader, escape

__all__ = ["AckError", "Disposition", "ERROR_CODES", "ack_codes", "build_ack", "conflict_error"]

ERROR_CODES = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "205": "Duplicate key identifier",
    "207": "Application internal error",
}
"""HL7 table 0357 (message error condition codes) that we send in ERR-3."""


class Disposition(enum.StrEnum):
    """What became of one message; decides the ACK codes."""

    APPLIED = "applied"
    """Stored durably and applied to the context store."""
    DUPLICATE = "duplicate"
    """Same sender, MSH-10 and content as a message applied before: acknowledged, not applied
    again."""
    CONFLICT = "conflict"
    """Same sender and MSH-10 as a message applied before, but other content: stored for
    review, not applied (ERR 205, duplicate key identifier)."""
    INVALID = "invalid"
    """Stored durably, but it broke a rule, so it was not applied."""
    REJECTED = "rejected"
    """Not a message we can take (unparseable, broken MSH, unsupported type or version)."""
    FAILED = "failed"
    """We could not store it; the sender keeps it and resends."""


_ORIGINAL = {
    Disposition.APPLIED: "AA",
    Disposition.DUPLICATE: "AA",
    Disposition.CONFLICT: "AE",
    Disposition.INVALID: "AE",
    Disposition.REJECTED: "AR",
    Disposition.FAILED: "AE",
}
_ACCEPT = {
    Disposition.APPLIED: "CA",
    Disposition.DUPLICATE: "CA",
    Disposition.CONFLICT: "CA",
    Disposition.INVALID: "CA",
    Disposition.REJECTED: "CR",
    Disposition.FAILED: "CE",
}


@dataclass(frozen=True, slots=True)
class AckError:
    """What an ERR segment says: table 0357 code, where (ERL) and a message for people."""

    code: str
    text: str
    location: str = ""
    severity: str = "E"

    @classmethod
    def of(cls, issue: Issue) -> AckError:
        """The ERR of a problem found in a message (``core.hl7.Issue``)."""
        return cls(issue.code, issue.reason, issue.location, issue.severity)


def conflict_error(control_id: str) -> AckError:
    """ERR 205 for a message that reuses an applied message's MSH-10 with other content."""
    return AckError(
        "205",
        (
            f"MSH-10: control ID {control_id[:40]!r} of this sender belongs to an applied message "
            "with other content; this one was kept for review and not applied; expected a new "
            "control ID for a new message"
        ),
        "MSH^1^10",
    )


def ack_codes(header: MessageHeader | None, disposition: Disposition) -> tuple[str, ...]:
    """The ACK codes to send, in order, for a message's disposition (MSH-15/16 aware).

    >>> h = MessageHeader("RIS", "H", "AI", "H", "ADT", "A01", "", "1", "P", "2.5")
    >>> ack_codes(h, Disposition.APPLIED)
    ('AA',)
    >>> from dataclasses import replace
    >>> ack_codes(replace(h, accept_ack_type="AL", application_ack_type="ER"), Disposition.APPLIED)
    ('CA',)
    >>> ack_codes(replace(h, accept_ack_type="AL", application_ack_type="ER"), Disposition.INVALID)
    ('CA', 'AE')
    """
    if header is None or not header.enhanced_mode:
        return (_ORIGINAL[disposition],)
    ok = disposition in (Disposition.APPLIED, Disposition.DUPLICATE)
    out = []
    accept_ok = disposition not in (Disposition.REJECTED, Disposition.FAILED)
    if _wanted(_condition(header.accept_ack_type, "NE"), accept_ok):
        out.append(_ACCEPT[disposition])
    if _wanted(_condition(header.application_ack_type, "AL"), ok):
        out.append(_ORIGINAL[disposition])
    return tuple(out)


def _condition(value: str, empty: str) -> str:
    """An MSH-15/16 value as table 0155 reads it: ``empty`` when empty, and ``AL`` for a value
    the table does not have (a frame must never go unanswered because of a typo)."""
    if not value:
        return empty
    return value if value in ("AL", "NE", "ER", "SU") else "AL"


def _wanted(condition: str, success: bool) -> bool:
    """HL7 table 0155: AL always, NE never, ER on error only, SU on success only."""
    return condition == "AL" or (condition == "ER" and not success) or (condition == "SU" and success)


def build_ack(
    code: str,
    request: MessageHeader | None,
    *,
    application: str,
    facility: str,
    control_id: str,
    at: datetime,
    error: AckError | None = None,
) -> str:
    """Build an ACK in ER7 (segments end in CR), swapping sender and receiver of ``request``.

    Args:
        code: MSA-1: AA, AE, AR, CA, CE or CR.
        request: The acknowledged message's header; ``None`` when it could not be read.
        application: Our MSH-3.
        facility: Our MSH-4.
        control_id: This ACK's own MSH-10 (unique per ACK).
        at: MSH-7.
        error: What the ERR segment says (AE / AR / CE / CR).

    Returns:
        The ACK message text.
    """
    version = request.version if request and request.version else "2.5.1"
    trigger = request.trigger_event if request else ""
    msh9 = "ACK" if version in ("2.1", "2.2", "2.3") else f"ACK^{escape(trigger)}^ACK"
    stamp = at.strftime("%Y%m%d%H%M%S") + (at.strftime("%z") if at.tzinfo else "")
    msh = "|".join(
        [
            "MSH",
            "^~\\&",
            escape(application),
            escape(facility),
            request.sending_application if request else "",
            request.sending_facility if request else "",
            stamp,
            "",
            msh9,
            escape(control_id),
            escape(request.processing_id) if request and request.processing_id else "P",
            escape(version),
        ]
    )
    text = error.text[:80] if error else ""
    msa = f"MSA|{code}|{escape(request.control_id) if request else ''}|{escape(text)}".rstrip("|")
    segments = [msh, msa]
    if error is not None and (error.severity != "W" or version not in _PRE_25):
        segments.append(_err(error, version))
    return "\r".join(segments) + "\r"


_PRE_25 = ("2.1", "2.2", "2.3", "2.3.1", "2.4")
"""Versions whose ERR is ERR-1 (ELD), without ERR-4 severity."""


def _err(error: AckError, version: str) -> str:
    label = ERROR_CODES.get(error.code, "")
    location = "^".join(escape(p) for p in error.location.split("^")) if error.location else ""
    if version in _PRE_25:  # ERR-1 (ELD) before v2.5
        where = (location.split("^") + ["", "", ""])[:3]
        return f"ERR|{'^'.join(where)}^{escape(error.code)}&{escape(label)}&HL70357"
    cwe = f"{escape(error.code)}^{escape(label)}^HL70357"
    return f"ERR||{location}|{cwe}|{escape(error.severity)}||||{escape(error.text)}"
