"""Who may associate with the DICOM listener, and the audit event of every refusal (issue 13).

pynetdicom checks the calling AE title against a list, but a calling AE title is just bytes
the peer chooses. With TLS and client certificates the gate binds each allowed title to the
certificate subjects that may use it (``listener.calling_ae_subjects``, the rule is
``core.exposure.association_refusal``): an association whose calling AE title is not bound to
the peer certificate's subject CN is refused (A-ASSOCIATE-RJ, rejected permanent, calling AE
title not recognised) before any negotiation. Every refused association, the gate's and those
pynetdicom refuses itself (called AE title wrong), is an ``association_refused`` audit event.
"""

from __future__ import annotations

import logging
from typing import Any

from actors.adapters.tls import peer_subject
from core.audit import AuditEvent
from core.config import ListenerConfig
from core.exposure import association_refusal
from core.ports import Clock
from core.types import AuditEventType
from state.ledger import Ledger

__all__ = ["AssociationGate"]

logger = logging.getLogger(__name__)

REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03
"""A-ASSOCIATE-RJ result, source and reason (PS3.8 9.3.4)."""


class AssociationGate:
    """pynetdicom handlers: ``on_requested`` (EVT_REQUESTED) and ``on_rejected`` (EVT_REJECTED)."""

    def __init__(self, cfg: ListenerConfig, ledger: Ledger, actor: str, clock: Clock) -> None:
        self._cfg = cfg
        self._ledger = ledger
        self._actor = actor
        self._clock = clock

    def on_requested(self, event: Any) -> None:
        """EVT_REQUESTED: refuse a calling AE title not allowed, or not bound to the peer's
        certificate subject; audit it. Never raises (a failing handler must not accept)."""
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        subject = peer_subject(sock)
        reason = association_refusal(calling, subject, self._cfg)
        if reason is None:
            return
        assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
        self._audit(assoc, reason, subject)
        assoc.kill()

    def on_rejected(self, event: Any) -> None:
        """EVT_REJECTED (pynetdicom refused it, e.g. the called AE title): audit it."""
        assoc = event.assoc
        if not assoc.is_acceptor:
            return
        primitive = getattr(assoc.acceptor, "primitive", None)
        diagnostic = getattr(primitive, "diagnostic", None)
        self._audit(assoc, f"A-ASSOCIATE-RJ diagnostic {diagnostic}", None)

    def _audit(self, assoc: Any, reason: str, subject: str | None) -> None:
        rq = assoc.requestor.primitive
        detail = {
            "reason": reason,
            "calling_ae": str(rq.calling_ae_title).strip(),
            "called_ae": str(rq.called_ae_title).strip(),
            "peer": f"{assoc.requestor.address}:{assoc.requestor.port}",
            "subject": subject or "",
        }
        logger.warning("association from %s (%s) refused: %s", detail["peer"], detail["calling_ae"], reason)
        try:
            self._ledger.audit.append(
                [AuditEvent(AuditEventType.ASSOCIATION_REFUSED, self._actor, detail=detail)], self._clock.now()
            )
        except Exception:  # noqa: BLE001 - the refusal stands whether or not its audit is stored
            logger.exception("association_refused audit event not stored")
