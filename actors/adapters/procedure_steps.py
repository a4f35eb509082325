"""The listener's DIMSE-N side: MPPS SCP (N-CREATE / N-SET) and IAN SCP (N-CREATE).

A modality reports its procedure steps (Modality Performed Procedure Step SOP Class, PS3.4 F;
IHE RAD-6 / RAD-7) and a PACS may notify which instances it holds (Instance Availability
Notification SOP Class, PS3.4 R; IHE RAD-49). Both are completion evidence for the assembler
(``core.completeness``). The rules live in ``core.mpps`` and ``core.ian``; this module maps
requests to them, stores the result in the ledger (``ledger.evidence``) and answers.

A handler never raises. A request the rules refuse is answered with the ``DimseRefused``
status, Error Comment and Error ID (e.g. 0110H with A710H for a step that is final) and
audited (``evidence_refused``); the ledger unreachable is 0213H Resource limitation, so the
modality may retry; anything unexpected 0110H Processing failure.
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset

from core.audit import AuditEvent
from core.errors import DependencyUnavailable, DimseRefused
from core.ian import IAN_SOP_CLASS_UID, notice_from_n_create
from core.mpps import MPPS_SOP_CLASS_UID, NStatus, create_step, set_step
from core.ports import Clock
from core.types import AuditEventType
from state.ledger import Ledger

__all__ = ["EVIDENCE_SOP_CLASSES", "EvidenceScp"]

logger = logging.getLogger(__name__)

EVIDENCE_SOP_CLASSES = (MPPS_SOP_CLASS_UID, IAN_SOP_CLASS_UID)
"""SOP classes whose DIMSE-N requests the listener accepts."""
RESOURCE_LIMITATION = 0x0213
"""PS3.7 C.5: the SCP cannot perform the request now (our ledger is unreachable)."""
NO_SUCH_SOP_CLASS = 0x0118
"""PS3.7 C.5: the SOP Class of the request is not one we serve."""


def _status(exc: DimseRefused) -> Dataset:
    """The response Status with Error Comment (LO, 64 chars) and Error ID, where set."""
    status = Dataset()
    status.Status = int(exc.status)
    status.ErrorComment = exc.error_comment
    if exc.error_id:
        status.ErrorID = int(exc.error_id)
    return status


class EvidenceScp:
    """EVT_N_CREATE / EVT_N_SET handlers that record MPPS steps and IAN notices."""

    def __init__(self, ledger: Ledger, actor: str, clock: Clock) -> None:
        """Args:
        ledger: This process's ledger.
        actor: Audit name of the listener (``listener:<AE>``).
        clock: Wall clock.
        """
        self._ledger = ledger
        self._actor = actor
        self._clock = clock
        self.accepted = 0
        self.refused = 0

    def handle_n_create(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        """EVT_N_CREATE: an MPPS step starting, or an IAN. Never raises."""
        request = event.request
        return self._answer(
            "N-CREATE", event, str(request.AffectedSOPClassUID or ""), str(request.AffectedSOPInstanceUID or "")
        )

    def handle_n_set(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        """EVT_N_SET: an MPPS step changing (COMPLETED / DISCONTINUED). Never raises."""
        request = event.request
        return self._answer(
            "N-SET", event, str(request.RequestedSOPClassUID or ""), str(request.RequestedSOPInstanceUID or "")
        )

    def _answer(self, kind: str, event: Any, sop_class: str, uid: str) -> tuple[int | Dataset, Dataset | None]:
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            self._apply(kind, event, sop_class, uid.strip(), calling)
        except DimseRefused as exc:
            self.refused += 1
            logger.info("%s %s refused 0x%04X: %s", kind, uid, exc.status, exc.error_comment)
            self._audit_refusal(kind, sop_class, uid, calling, exc)
            return _status(exc), None
        except DependencyUnavailable as exc:
            logger.warning("%s %s: the ledger is unavailable (%s)", kind, uid, exc)
            return RESOURCE_LIMITATION, None
        except Exception:  # the one broad catch at the protocol boundary: log and answer
            logger.exception("%s handler failed unexpectedly", kind)
            return NStatus.PROCESSING_FAILURE.value, None
        self.accepted += 1
        return NStatus.SUCCESS.value, None

    def _apply(self, kind: str, event: Any, sop_class: str, uid: str, calling: str) -> None:
        """Apply one request to the ledger.

        Raises:
            DimseRefused: The request breaks PS3.4 F.7.2 / R (or names another SOP class).
        """
        now = self._clock.now()
        if sop_class == MPPS_SOP_CLASS_UID and kind == "N-CREATE":
            ds = event.attribute_list
            self._ledger.evidence.record_step(
                uid, lambda old: create_step(ds, uid, calling, now, old), self._actor, now
            )
        elif sop_class == MPPS_SOP_CLASS_UID:
            ds = event.modification_list
            self._ledger.evidence.record_step(uid, lambda old: set_step(old, ds, uid, now), self._actor, now)
        elif sop_class == IAN_SOP_CLASS_UID and kind == "N-CREATE":
            notice = notice_from_n_create(event.attribute_list, uid, calling, now)
            if not self._ledger.evidence.record_notice(notice, self._actor, now):
                raise DimseRefused(
                    "Duplicate SOP Instance: the notification exists", uid, NStatus.DUPLICATE_SOP_INSTANCE
                )
        else:
            raise DimseRefused(
                f"Got {kind} of SOP Class {sop_class}; expected MPPS N-CREATE / N-SET or IAN N-CREATE",
                uid,
                NO_SUCH_SOP_CLASS,
            )

    def _audit_refusal(self, kind: str, sop_class: str, uid: str, calling: str, exc: DimseRefused) -> None:
        event = AuditEvent(
            AuditEventType.EVIDENCE_REFUSED,
            self._actor,
            sop_instance_uid=uid,
            detail={
                "request": kind,
                "sop_class": sop_class,
                "calling_ae": calling,
                "status": f"0x{exc.status:04X}",
                "error_id": f"0x{exc.error_id:04X}",
                "error_comment": exc.error_comment,
            },
        )
        try:
            self._ledger.audit.append([event], self._clock.now())
        except Exception:  # the answer matters more than its audit line: log it
            logger.exception("could not audit a refused %s", kind)
