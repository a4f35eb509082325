"""HL7 listener actor: the MLLP listener of the HL7 bridge as a Ray actor.

Like the DICOM listener it depends only on its disk: the context store it writes and the
ledger it audits into. Ray restarts it (and so rebinds the port) if it dies; the sender
resends what was not acknowledged, and the inbox keeps it from being applied twice.
"""

from __future__ import annotations

from typing import Any

import ray

from actors.adapters.hl7_inbox import Hl7Listener
from actors.adapters.ledger import SqliteLedger
from actors.adapters.paths import VarLayout
from actors.stage import configure_logging
from core.config import Hl7Config

__all__ = ["Hl7ListenerActor"]


@ray.remote
class Hl7ListenerActor:
    """Ray shell around ``Hl7Listener``."""

    def __init__(
        self, cfg: Hl7Config, layout: VarLayout, hash_key: bytes, log_level: str = "INFO"
    ) -> None:
        configure_logging(log_level)
        Hl7Listener.tune_process()
        self._listener = Hl7Listener(cfg, layout.context, SqliteLedger(layout.ledger), hash_key)
        self._listener.start()

    def port(self) -> int:
        """Return the bound MLLP port."""
        return self._listener.port

    def health(self) -> dict[str, Any]:
        """Return counters for the supervisor."""
        counts = self._listener.counts
        return {
            "stage": "hl7_listener",
            "alive": True,
            "processed": counts["applied"] + counts["duplicate"],
            "failures": counts["invalid"] + counts["conflict"] + counts["rejected"]
            + counts["failed"],
            "in_flight": 0,
            "last_error": "",
            "counts": dict(counts),
        }

    def stop(self) -> None:
        """Close the port; audit what is left."""
        self._listener.stop()
