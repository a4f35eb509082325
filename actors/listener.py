"""Listener actor: the DICOM SCP as a Ray actor (depends only on its disk and the ledger)."""

from __future__ import annotations

from typing import Any

import ray

from actors.adapters.dimse import Listener
from actors.adapters.ledger import SqliteLedger
from actors.adapters.paths import VarLayout
from actors.stage import configure_logging
from core.config import AssemblyConfig, ListenerConfig

__all__ = ["ListenerActor"]


@ray.remote
class ListenerActor:
    """Ray shell around ``Listener``; Ray restarts it (and so rebinds the port) if it dies."""

    def __init__(
        self,
        cfg: ListenerConfig,
        layout: VarLayout,
        quiet_period_s: float,
        hash_key: bytes,
        log_level: str = "INFO",
        assembly: AssemblyConfig | None = None,
    ) -> None:
        configure_logging(log_level)
        self._ledger = SqliteLedger(layout.ledger)
        self._listener = Listener(
            cfg, layout.spool, layout.rejected, self._ledger, quiet_period_s, hash_key=hash_key,
            assembly=assembly,
        )
        self._listener.start()

    def port(self) -> int:
        """Return the bound DIMSE port."""
        return self._listener.port

    def health(self) -> dict[str, Any]:
        """Return counters for the supervisor."""
        return {
            "stage": "listener",
            "alive": True,
            "processed": self._listener.received,
            "failures": self._listener.failed,
            "in_flight": 0,
            "last_error": "",
        }

    def stop(self) -> None:
        """Close the port."""
        self._listener.stop()
