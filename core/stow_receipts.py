"""STOW-RS store responses (PS3.18 10.5.3) read by the sender: one receipt per instance sent.

The receiving side (our own STOW-RS service building such responses) is ``core.stow_rs``.

The origin server answers a Store Instances request with an HTTP status and a response data
set (PS3.18 Table 10.5.3-3): ``ReferencedSOPSequence`` (0008,1199) lists what it stored, each
item optionally with a ``WarningReason`` (0008,1196); ``FailedSOPSequence`` (0008,1198) lists
what it did not store, each item with a ``FailureReason`` (0008,1197).

The rule here is the conservative one: an instance counts as stored **only** when the
response lists it in ``ReferencedSOPSequence`` and the HTTP status is 2xx (200 OK: all stored;
202 Accepted: some stored, or stored with warnings). 400 and 409 mean that nothing was stored
(PS3.18 Table 10.5.3-2), whatever the body lists. An instance the response does not list at
all (an empty body, even with 200) is not stored: sending it again is harmless, because our
objects' UIDs and bytes are the same each time, while a result taken as delivered that never
was is lost.

Receipts carry a status the way a C-STORE response does (PS3.4 B.2.3): ``0x0000`` or a
``0xBxxx`` warning when stored, a failure otherwise, so the delivery stage treats both
transports alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

__all__ = [
    "COERCION_WARNING",
    "NOT_AUTHORIZED",
    "OUT_OF_RESOURCES",
    "PROCESSING_FAILURE",
    "StowReceipt",
    "peer_unavailable",
    "read_stow_response",
    "stow_receipts",
]

PROCESSING_FAILURE = 0x0110
"""Failure Reason "Processing failure" (PS3.18 Table 10.5.3-3, PS3.7 C.4): the instance was not
stored and the server gave no reason of its own (or did not list the instance at all)."""
NOT_AUTHORIZED = 0x0124
"""Failure "Refused: not authorized" (PS3.7 C.4): HTTP 401 or 403 without a reason listed."""
OUT_OF_RESOURCES = 0xA700
"""Failure "Refused: out of resources" (PS3.4 B.2.3): HTTP 413 (the request was too large)."""
COERCION_WARNING = 0xB000
"""Warning "Coercion of data elements" (PS3.4 B.2.3), given to a stored instance whose Warning
Reason is outside the 0xBxxx warning range, so that it still reads as stored."""


@dataclass(frozen=True, slots=True)
class StowReceipt:
    """What the server did with one instance of a STOW-RS request.

    Attributes:
        sop_instance_uid: The instance.
        status: ``0x0000`` (stored), ``0xBxxx`` (stored with a warning) or a failure.
        detail: Why, in words (the HTTP status and what the response said about it).
    """

    sop_instance_uid: str
    status: int
    detail: str = ""

    @property
    def stored(self) -> bool:
        """Success or warning, as for a C-STORE (PS3.4 B.2.3)."""
        return self.status == 0x0000 or (self.status & 0xF000) == 0xB000


def peer_unavailable(http_status: int) -> bool:
    """Whether an HTTP status means the server is down or busy, not that it judged the request.

    408 Request Timeout, 429 Too Many Requests and every 5xx: the request should be sent again
    later, as it is, without counting as a refusal.

    >>> peer_unavailable(503), peer_unavailable(409), peer_unavailable(200)
    (True, False, False)
    """
    return http_status in (408, 429) or http_status >= 500


def read_stow_response(body: bytes | str) -> Dataset | None:
    """Parse a STOW-RS response body in the DICOM JSON Model (PS3.18 F.2).

    Returns:
        The response data set, or ``None`` when the body is empty or not a DICOM JSON object.

    >>> read_stow_response(b"") is None, read_stow_response(b"<xml/>") is None
    (True, True)
    >>> read_stow_response(b'{"a":' * 100_000) is None  # too deep for json: not a receipt, not a raise
    True
    >>> len(read_stow_response(b'{"00081199": {"vr": "SQ"}}').ReferencedSOPSequence)
    0
    """
    if not body or not body.strip():
        return None
    try:
        raw = json.loads(body)
        if not isinstance(raw, dict):
            return None
        response = Dataset.from_json(raw)
        for sequence, reason in (("ReferencedSOPSequence", "WarningReason"), ("FailedSOPSequence", "FailureReason")):
            _items(response, sequence, reason)  # read now: pydicom converts elements lazily
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None
    return response


def stow_receipts(sop_instance_uids: Sequence[str], http_status: int, response: Dataset | None) -> list[StowReceipt]:
    """Map a STOW-RS answer to one receipt per instance sent, in the order sent.

    Args:
        sop_instance_uids: The SOP Instance UIDs of the request, in order.
        http_status: The HTTP status of the answer (not one ``peer_unavailable`` names: the
            caller waits those out instead).
        response: The response data set (``read_stow_response``), or ``None``.

    Returns:
        One receipt per UID. Stored only if listed as referenced under a 2xx status; a failed
        item's ``FailureReason`` when it is listed as failed (or as both); otherwise a failure
        that names the HTTP status (``PROCESSING_FAILURE``, ``NOT_AUTHORIZED``,
        ``OUT_OF_RESOURCES``).

    Raises:
        ValueError: ``http_status`` is one the caller must wait out (``peer_unavailable``).
    """
    if peer_unavailable(http_status):
        raise ValueError(f"got HTTP {http_status}; expected an answer about the instances (wait out 408/429/5xx)")
    referenced = _items(response, "ReferencedSOPSequence", "WarningReason")
    failed = _items(response, "FailedSOPSequence", "FailureReason")
    return [_receipt(uid, http_status, referenced, failed) for uid in sop_instance_uids]


def _receipt(
    uid: str, http_status: int, referenced: dict[str, int | None], failed: dict[str, int | None]
) -> StowReceipt:
    if uid in failed:
        reason = failed[uid]
        status = reason if reason and (reason & 0xF000) != 0xB000 else PROCESSING_FAILURE
        return StowReceipt(uid, status, f"HTTP {http_status}: listed as failed (Failure Reason {_hex(reason)})")
    if uid in referenced and 200 <= http_status < 300:
        warning = referenced[uid]
        if not warning:
            return StowReceipt(uid, 0x0000, f"HTTP {http_status}: stored")
        status = warning if (warning & 0xF000) == 0xB000 else COERCION_WARNING
        return StowReceipt(uid, status, f"HTTP {http_status}: stored with Warning Reason {_hex(warning)}")
    if uid in referenced:
        return StowReceipt(
            uid,
            _failure_of(http_status),
            f"HTTP {http_status}: listed as referenced, but the status says none was stored",
        )
    return StowReceipt(uid, _failure_of(http_status), f"HTTP {http_status}: the response does not list it as stored")


def _failure_of(http_status: int) -> int:
    """The failure status of an instance the response gave no reason for."""
    if http_status in (401, 403):
        return NOT_AUTHORIZED
    if http_status == 413:
        return OUT_OF_RESOURCES
    return PROCESSING_FAILURE


def _items(response: Dataset | None, sequence: str, reason: str) -> dict[str, int | None]:
    """``{ReferencedSOPInstanceUID: reason or None}`` of one response sequence."""
    if response is None or sequence not in response:
        return {}
    element = response[sequence]
    if element.VR != "SQ":
        raise ValueError(f"{sequence}: got VR {element.VR}; expected SQ")
    out: dict[str, int | None] = {}
    for item in element.value or []:
        uid = item.get("ReferencedSOPInstanceUID")
        if uid:
            value = item.get(reason)
            out[str(uid)] = int(value) if value is not None else None
    return out


def _hex(value: int | None) -> str:
    return "none given" if value is None else f"0x{value:04X}"
