"""The listener's C-STORE response, encoded in one pass (one is sent per instance received).

pynetdicom's ``DIMSEServiceProvider.send_msg`` builds a response from a template ``Dataset``
of every element the message type may carry, fills and deletes them one by one, encodes the
command set once to learn its group length and again to send it: ~290 µs of the GIL for each
C-STORE-RSP on this machine (``bench_ingest.py``'s listener answers ~250 a second, so ~7 % of
the process), for a command set of six elements.

``c_store_rsp_pdata`` writes the same bytes directly: PS3.7 9.3.1.2 (Table 9.3-2) in the Implicit
VR Little Endian transfer syntax every command set uses (PS3.7 6.3.1), the elements in tag order,
a UID padded with one NUL to even length, the Command Group Length first, all in one P-DATA
value (PS3.8 E.2: message control header ``0x03``, a command's last fragment). It handles the
response the Storage SCP sends for an instance: Status, the two Affected UIDs, the Message ID
Being Responded To. A response with an Error Comment or an Offending Element, UIDs that are not
plain ASCII of at most 64 characters, or a peer whose maximum PDU cannot hold it in one value is
left to pynetdicom (``None``). ``tests/unit/test_store_response.py`` holds it to pynetdicom's own
encoding of the same primitives.
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

__all__ = ["c_store_rsp_pdata"]

_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101
_UI_MAX = 64


def _element(element: int, value: bytes) -> bytes:
    """One implicit VR little endian element of group 0000: tag, 32-bit length, value."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _uid(value: str) -> bytes | None:
    if not value.isascii() or len(value) > _UI_MAX:
        return None
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def c_store_rsp_pdata(primitive: Any, context_id: int, max_pdu_length: int) -> P_DATA | None:
    """The P-DATA of a C-STORE response primitive, or ``None`` where pynetdicom must encode it."""
    if type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is None or primitive.Status is None:
        return None
    if primitive.ErrorComment is not None or primitive.OffendingElement is not None:
        return None
    body = []
    if primitive.AffectedSOPClassUID is not None:
        uid = _uid(str(primitive.AffectedSOPClassUID))
        if uid is None:
            return None
        body.append(_element(0x0002, uid))
    body.append(_element(0x0100, struct.pack("<H", _C_STORE_RSP)))
    body.append(_element(0x0120, struct.pack("<H", primitive.MessageIDBeingRespondedTo)))
    body.append(_element(0x0800, struct.pack("<H", _NO_DATA_SET)))
    body.append(_element(0x0900, struct.pack("<H", primitive.Status)))
    if primitive.AffectedSOPInstanceUID is not None:
        uid = _uid(str(primitive.AffectedSOPInstanceUID))
        if uid is None:
            return None
        body.append(_element(0x1000, uid))
    elements = b"".join(body)
    command = _element(0x0000, struct.pack("<I", len(elements))) + elements
    if max_pdu_length and len(command) > max_pdu_length - 6:
        return None  # more than one fragment: pynetdicom's fragmenting
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
    return pdata
