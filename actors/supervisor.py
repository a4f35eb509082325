"""Supervisor: health-checks every actor and records what it finds in the ledger.

Ray restarts dead actors (``max_restarts=-1``); jobs whose worker died are taken again when
their lease expires. The supervisor makes both visible: an actor that does not answer is
recorded as ``down`` in ``stage_health`` (shown by ``pacsai status``) and logged once per change.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from actors.adapters.ledger import SqliteLedger

__all__ = ["Supervisor"]

logger = logging.getLogger(__name__)


class Supervisor:
    """Periodic health check of a running pipeline."""

    def __init__(self, pipeline: Any, ledger: SqliteLedger) -> None:
        """Args:
        pipeline: The running ``actors.pipeline.Pipeline``.
        ledger: Where health is recorded.
        """
        self._pipeline = pipeline
        self._ledger = ledger
        self._last: dict[str, bool] = {}

    def check(self) -> dict[str, dict[str, Any]]:
        """Ask every actor; record and log changes; return the answers."""
        health = self._pipeline.health()
        now = time.time()
        for name, h in health.items():
            alive = bool(h.get("alive"))
            if self._last.get(name) != alive:
                log = logger.info if alive else logger.error
                log("actor %s is %s%s", name, "up" if alive else "DOWN",
                    "" if alive else f": {h.get('last_error', '')}")
            self._last[name] = alive
            self._ledger.heartbeat(
                name,
                os.getpid(),
                now,
                processed=int(h.get("processed", 0)),
                failures=int(h.get("failures", 0)),
                in_flight=int(h.get("in_flight", 0)),
                last_error=str(h.get("last_error", ""))[:500],
                status="ok" if alive else "down",
            )
        return health
