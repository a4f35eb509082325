"""Auditor actor: chains new audit events (PostgreSQL), keeps checking that the trail's hash
chain is intact, and answers queries. Events themselves are appended by each stage in the same
transaction as the state change they describe, so the trail can never disagree with the
ledger."""

from __future__ import annotations

import logging
from typing import Any

import ray

from actors.polling import Loop
from actors.stage import ActorShell
from core.audit import AuditEntry
from core.config import StorageConfig

__all__ = ["AuditorActor"]

logger = logging.getLogger(__name__)

CHAIN_S = 0.5
"""How often events appended unchained (PostgreSQL) are linked into the chain."""


@ray.remote
class AuditorActor(ActorShell):
    """Verifies the audit chain periodically; serves audit queries."""

    name = "auditor"

    def __init__(self, storage: StorageConfig, period_s: float = 30.0, log_level: str = "INFO") -> None:
        self._open_ledger(storage, log_level)
        self._last: dict[str, Any] = {"intact": None, "checked_at": None}
        self._add_loop(Loop("audit-chain", self._ledger.audit.chain, CHAIN_S, clock=self._clock))
        self._add_loop(Loop("audit-verify", self._round, period_s, clock=self._clock))
        self._start_heartbeat()

    def _round(self) -> int:
        self.verify()
        return 1

    def verify(self) -> dict[str, Any]:
        """Check the chain now; return ``{"intact": bool, "break": ..., "checked_at": t}``."""
        broken = self._ledger.audit.verify()
        self._last = {
            "intact": broken is None,
            "break": None if broken is None else {"seq": broken.seq, "reason": broken.reason},
            "checked_at": self._clock.now(),
        }
        if broken is not None:
            logger.error("audit chain broken at seq %d: %s", broken.seq, broken.reason)
        return self._last

    def events(self, study_uid: str | None = None, limit: int = 1000) -> list[AuditEntry]:
        """Stored audit events, optionally of one study."""
        return self._ledger.audit.events(study_uid, limit)

    def _counters(self) -> tuple[int, int, int, str]:
        broken = self._last.get("intact") is False
        return 0, int(broken), 0, "audit chain broken" if broken else ""
