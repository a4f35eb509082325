"""Issue 14: the listener's C-STORE response, encoded in one pass, is byte for byte what
pynetdicom's own ``send_msg`` path sends for the same primitive; anything else is left to it."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import P_DATA_TF

from actors.adapters.store_response import c_store_rsp_pdata

UIDS = st.from_regex(r"\A[1-9][0-9]{0,20}(\.(0|[1-9][0-9]{0,10})){0,6}\Z").filter(lambda u: len(u) <= 64)
STATUSES = st.sampled_from([0x0000, 0xB000, 0xB007, 0xA700, 0xA900, 0xC000, 0xC211, 0x0122, 0x0124])


def _response(message_id: int, status: int, sop_class: str | None, sop_instance: str | None) -> C_STORE:
    """What pynetdicom's Storage SCP builds (``StorageServiceClass.SCP``)."""
    rsp = C_STORE()
    rsp.MessageID = message_id
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    return rsp


def _pynetdicom(primitive: Any, context_id: int, max_pdu: int) -> list[bytes]:
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    return [_wire(p) for p in message.encode_msg(context_id, max_pdu)]


def _wire(pdata: Any) -> bytes:
    pdu = P_DATA_TF()
    pdu.from_primitive(pdata)
    return bytes(pdu.encode())


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    STATUSES,
    st.none() | UIDS,
    st.none() | UIDS,
    st.integers(1, 255),
    st.sampled_from([0, 16384, 1 << 20]),
)
def test_the_one_pass_response_is_what_pynetdicom_sends(message_id, status, sop_class, sop_instance, cx, max_pdu):
    rsp = _response(message_id, status, sop_class, sop_instance)
    ours = c_store_rsp_pdata(rsp, cx, max_pdu)
    assert ours is not None
    assert [_wire(ours)] == _pynetdicom(rsp, cx, max_pdu)


def test_what_it_does_not_encode_is_left_to_pynetdicom():
    uid = "1.2.840.10008.5.1.4.1.1.2"
    with_comment = _response(1, 0xC000, uid, "1.2.3")
    with_comment.ErrorComment = "cannot understand"
    offending = _response(1, 0xA900, uid, "1.2.3")
    offending.OffendingElement = [0x00100010]
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = uid
    request.AffectedSOPInstanceUID = "1.2.3"
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 1
    echo.Status = 0
    for primitive in (with_comment, offending, request, echo):
        assert c_store_rsp_pdata(primitive, 1, 16384) is None
    # a peer whose PDUs cannot hold the whole command set in one value: pynetdicom fragments it
    small = _response(1, 0, uid, "1.2.3.4")
    assert len(_pynetdicom(small, 1, 64)) > 1 and c_store_rsp_pdata(small, 1, 64) is None
