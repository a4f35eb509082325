"""Supervisor: health-checks every actor and records what it finds in the ledger.

Ray restarts dead actors (``max_restarts=-1``); jobs whose worker died are taken again when
their lease expires. The supervisor makes both visible: each actor records its own health every
second, and an actor that does not answer here is recorded as ``down`` (shown by ``pacsai
status``) and logged once per change. The model applications that ``pacsai up`` deploys in the
background are recorded here too, as the row ``models`` (each application running, deploying
or failed). A round that fails (the ledger is unreachable) is logged and tried again by the
loop: it never ends ``pacsai up``.
"""

from __future__ import annotations

import logging
from typing import Any

from actors.adapters.clock import SystemClock
from actors.polling import Loop
from core.health import ActorHealth, HealthStatus
from core.ports import Clock
from state.ledger import Ledger

__all__ = ["SUPERVISE_S", "Supervisor"]

logger = logging.getLogger(__name__)

SUPERVISE_S = 2.0
"""Period of the supervision loop of ``pacsai up``."""


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
        """Ask every actor; log changes; record the ones that did not answer, and the model
        applications."""
        health = self._pipeline.health()
        models_health = getattr(self._pipeline, "models_health", None)  # a pipeline deploying no models may lack it
        models = models_health() if models_health is not None else None
        if models is not None:
            self._ledger.controls.record_health(models, self._clock.now())
            health = {**health, models.actor: models}
        for name, h in health.items():
            status = h.status
            if self._last.get(name) != status:
                log = logger.info if status is HealthStatus.OK else logger.error
                error = h.last_error or next((f"{lp.name}: {lp.last_error}" for lp in h.loops if lp.last_error), "")
                log(
                    "actor %s is %s%s",
                    name,
                    status.value,
                    f": {error}" if status is not HealthStatus.OK and error else "",
                )
            self._last[name] = status
            if h.pid == 0:  # did not answer: nobody else will record it
                self._ledger.controls.record_health(h, self._clock.now(), HealthStatus.DOWN)
        return health

    def run_once(self) -> int:
        """One supervision round (``actors.polling.Loop``)."""
        self.check()
        return 0

    def start(self, period_s: float = SUPERVISE_S) -> Loop:
        """Run ``check`` every ``period_s`` in a loop of its own, as ``pacsai up`` does: a round
        that fails (the ledger is down) is logged and retried, and never ends the loop."""
        return Loop("supervisor", self.run_once, period_s, clock=self._clock).start()
