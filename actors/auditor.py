"""Auditor actor: keeps checking that the audit trail's hash chain is intact and answers
queries. Events themselves are appended by each stage in the same transaction as the state
change they describe, so the trail can never disagree with the ledger."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray

from actors.adapters.ledger import SqliteLedger
from actors.adapters.paths import VarLayout
from actors.stage import configure_logging

__all__ = ["AuditorActor"]

logger = logging.getLogger(__name__)


@ray.remote
class AuditorActor:
    """Verifies the audit chain periodically; serves audit queries."""

    def __init__(self, layout: VarLayout, period_s: float = 30.0, log_level: str = "INFO") -> None:
        configure_logging(log_level)
        self._ledger = SqliteLedger(layout.ledger)
        self._period = period_s
        self._stop = threading.Event()
        self._last: dict[str, Any] = {"intact": None, "checked_at": None}
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.verify()
            self._stop.wait(self._period)

    def verify(self) -> dict[str, Any]:
        """Check the chain now; return ``{"intact": bool, "break": ..., "checked_at": t}``."""
        broken = self._ledger.verify_audit_chain()
        self._last = {
            "intact": broken is None,
            "break": None if broken is None else {"seq": broken.seq, "reason": broken.reason},
            "checked_at": time.time(),
        }
        if broken is not None:
            logger.error("audit chain broken at seq %d: %s", broken.seq, broken.reason)
        return self._last

    def events(self, study_uid: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Return audit events, optionally for one study."""
        return self._ledger.audit_events(study_uid, limit)

    def health(self) -> dict[str, Any]:
        """Return the last verification for the supervisor."""
        return {"stage": "auditor", "alive": True, "processed": 0, "failures": 0 if self._last.get("intact") is not False else 1, "in_flight": 0, "last_error": "" if self._last.get("intact") is not False else "audit chain broken"}

    def stop(self) -> None:
        """Stop the periodic check."""
        self._stop.set()
