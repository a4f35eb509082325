"""A modality (and a PACS) as the bridge meets them: paced sending, MPPS and IAN (pynetdicom).

The reference clients for C-STORE are dcmtk's (``demo.dcmtk``), but ``storescu`` sends as fast
as it can, and a scanner sends each slice as it is reconstructed: ``send_paced`` keeps one
association and waits between instances. dcmtk has no MPPS SCU, so the MPPS N-CREATE / N-SET
(PS3.4 F) and the IAN N-CREATE (PS3.4 R) come from pynetdicom, one association per request.
Nagle is off everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import InstanceAvailabilityNotification, ModalityPerformedProcedureStep

from actors.adapters.query_retrieve import SCU_HANDLERS  # Nagle off, responses to the caller

__all__ = ["NAnswer", "send_ian", "send_mpps_create", "send_mpps_set", "send_paced"]


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


def _send(sop_class: Any, port: int, called: str, calling: str, request: Any, host: str = "127.0.0.1") -> NAnswer:
    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(host, port, ae_title=called, evt_handlers=list(SCU_HANDLERS))
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
    return _send(
        ModalityPerformedProcedureStep,
        port,
        called,
        calling,
        lambda a: a.send_n_create(attributes, ModalityPerformedProcedureStep, sop_instance_uid),
    )


def send_mpps_set(port: int, called: str, calling: str, modification: Dataset, sop_instance_uid: str) -> NAnswer:
    """N-SET a Modality Performed Procedure Step (``COMPLETED`` / ``DISCONTINUED``)."""
    return _send(
        ModalityPerformedProcedureStep,
        port,
        called,
        calling,
        lambda a: a.send_n_set(modification, ModalityPerformedProcedureStep, sop_instance_uid),
    )


def send_ian(port: int, called: str, calling: str, attributes: Dataset, sop_instance_uid: str) -> NAnswer:
    """N-CREATE an Instance Availability Notification."""
    return _send(
        InstanceAvailabilityNotification,
        port,
        called,
        calling,
        lambda a: a.send_n_create(attributes, InstanceAvailabilityNotification, sop_instance_uid),
    )


def send_paced(
    files: Sequence[Path], port: int, called: str, calling: str, every_s: float, host: str = "127.0.0.1"
) -> list[int]:
    """C-STORE files over one association, one every ``every_s`` seconds (as a scanner
    reconstructs); return each status (-1: no association; -2: no answer).
    """
    datasets = [dcmread(f) for f in files]
    ae = AE(ae_title=calling)
    for sop_class, syntax in sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}):
        ae.add_requested_context(sop_class, syntax)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(host, port, ae_title=called, evt_handlers=list(SCU_HANDLERS))
    if not assoc.is_established:
        return [-1] * len(datasets)
    statuses = []
    try:
        for n, ds in enumerate(datasets):
            if n:
                time.sleep(every_s)
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status and "Status" in status else -2)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses
