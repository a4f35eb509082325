"""What the operations service layer refuses, and the argument checks both its halves share.

``NotFound`` (REST 404), ``Conflict`` (409) and ``InvalidArgument`` (422) are ``RejectedInput``s,
so ``pacsai`` answers them as before (exit 1) and the API with their own status.
"""

from __future__ import annotations

import re

from core.errors import RejectedInput

__all__ = [
    "CONTROL_CHARS",
    "Conflict",
    "HISTORY_MAX",
    "InvalidArgument",
    "LIMIT_MAX",
    "NotFound",
    "REASON_MAX",
    "check_family",
    "check_reason",
]

LIMIT_MAX = 1000
"""Most items one listing returns."""
HISTORY_MAX = 1000
"""Most audit events one job's history shows."""
REASON_MAX = 2000
"""Longest reason an operator may give (it is stored with the decision and audited)."""
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
"""PostgreSQL text refuses NUL; none belong in a reason or a version."""
_FAMILY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class NotFound(RejectedInput):
    """No such job, quarantine entry, model family or version (REST 404).

    Args:
        reason: What was asked for and what exists, naming the field.
        subject: The identifier asked for.
    """


class Conflict(RejectedInput):
    """The thing exists but its state does not allow the operation (REST 409).

    Args:
        reason: Its state and the state expected.
        subject: Its identifier.
    """


class InvalidArgument(RejectedInput):
    """An argument is malformed or out of range (REST 422).

    Args:
        reason: What was received and what was expected.
        field: The argument (``limit``, ``study``, ``family``...).
    """

    def __init__(self, reason: str, field: str) -> None:
        super().__init__(reason, field)
        self.field = field

    def __str__(self) -> str:
        return self.reason


def check_family(value: str) -> None:
    """Refuse a malformed model family name."""
    if not _FAMILY.match(value):
        raise InvalidArgument(f"family: got {value[:70]!r}; expected 1-64 letters, digits, '_' or '-'", "family")


def check_reason(reason: str | None, action: str, required: bool) -> str:
    """The reason, stripped; refused when required and missing, too long or with control characters."""
    text = (reason or "").strip()
    if required and not text:
        raise InvalidArgument(f"reason: got nothing; expected why you {action} it (it is audited)", "reason")
    if len(text) > REASON_MAX or CONTROL_CHARS.search(text):
        raise InvalidArgument(
            f"reason: got {len(text)} characters; expected at most {REASON_MAX}, no control characters", "reason"
        )
    return text
