"""A modality (and a PACS) telling the bridge about a study: MPPS and IAN over pynetdicom.

The reference clients for C-STORE are dcmtk's (``demo.dcmtk``); dcmtk has no MPPS SCU, so the
MPPS N-CREATE / N-SET (PS3.4 F) and the IAN N-CREATE (PS3.4 R) come from pynetdicom, one
association per request, Nagle off as everywhere else.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import InstanceAvailabilityNotification, ModalityPerformedProcedureStep

__all__ = ["NAnswer", "send_ian", "send_mpps_create", "send_mpps_set"]


@dataclass(frozen=True, slots=True)
class NAnswer:
    """The SCP's answer to one DIMSE-N request (``status`` -1: no association or no answer)."""

    status: int
    error_comment: str = ""
    error_id: int = 0

    @property
    def ok(self) -> bool:
        """Success."""
        return self.status == 0x0000


def _nodelay(event: Any) -> None:
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _send(sop_class: Any, port: int, called: str, calling: str, request: Any, host: str = "127.0.0.1") -> NAnswer:
    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(host, port, ae_title=called, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
    if not assoc.is_established:
        return NAnswer(-1, "no association")
    try:
        status, _ = request(assoc)
    finally:
        if assoc.is_established:
            assoc.release()
    if not status or "Status" not in status:
        return NAnswer(-1, "no answer")
    return NAnswer(int(status.Status), str(status.get("ErrorComment", "")), int(status.get("ErrorID", 0) or 0))


def send_mpps_create(port: int, called: str, calling: str, attributes: Dataset, sop_instance_uid: str) -> NAnswer:
    """N-CREATE a Modality Performed Procedure Step (``IN PROGRESS``)."""
    return _send(ModalityPerformedProcedureStep, port, called, calling,
                 lambda a: a.send_n_create(attributes, ModalityPerformedProcedureStep, sop_instance_uid))


def send_mpps_set(port: int, called: str, calling: str, modification: Dataset, sop_instance_uid: str) -> NAnswer:
    """N-SET a Modality Performed Procedure Step (``COMPLETED`` / ``DISCONTINUED``)."""
    return _send(ModalityPerformedProcedureStep, port, called, calling,
                 lambda a: a.send_n_set(modification, ModalityPerformedProcedureStep, sop_instance_uid))


def send_ian(port: int, called: str, calling: str, attributes: Dataset, sop_instance_uid: str) -> NAnswer:
    """N-CREATE an Instance Availability Notification."""
    return _send(InstanceAvailabilityNotification, port, called, calling,
                 lambda a: a.send_n_create(attributes, InstanceAvailabilityNotification, sop_instance_uid))
