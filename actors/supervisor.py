"""Supervisor: health-checks every actor and records what it finds in the ledger.

Ray restarts dead actors (``max_restarts=-1``); jobs whose worker died are taken again when
their lease expires. The supervisor makes both visible: each actor records its own health every
second, and an actor that does not answer here is recorded as ``down`` (shown by ``pacsai
status``) and logged once per change. A round that fails (the ledger is unreachable) is logged
and tried again by the loop: it never ends ``pacsai up``.
"""

from __future__ import annotations

import logging
from typing import Any

from actors.adapters.clock import SystemClock
from core.health import ActorHealth, HealthStatus
from core.ports import Clock
from state.ledger import Ledger

__all__ = ["Supervisor"]

logger = logging.getLogger(__name__)


class Supervisor:
    """Periodic health check of a running pipeline (one ``check`` per loop round)."""

    def __init__(self, pipeline: Any, ledger: Ledger, clock: Clock | None = None) -> None:
        """Args:
        pipeline: The running ``actors.pipeline.Pipeline``.
        ledger: Where health is recorded.
        clock: Wall clock.
        """
        self._pipeline = pipeline
        self._ledger = ledger
        self._clock = clock or SystemClock()
        self._last: dict[str, HealthStatus] = {}

    def check(self) -> dict[str, ActorHealth]:
        """Ask every actor; log changes; record the ones that did not answer."""
        health = self._pipeline.health()
        for name, h in health.items():
            status = h.status
            if self._last.get(name) != status:
                log = logger.info if status is HealthStatus.OK else logger.error
                log(
                    "actor %s is %s%s",
                    name,
                    status.value,
                    f": {h.last_error}" if status is not HealthStatus.OK and h.last_error else "",
                )
            self._last[name] = status
            if h.pid == 0:  # did not answer: nobody else will record it
                self._ledger.controls.record_health(h, self._clock.now(), HealthStatus.DOWN)
        return health

    def run_once(self) -> int:
        """One supervision round (``actors.polling.Loop``)."""
        self.check()
        return 0
