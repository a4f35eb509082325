"""HL7 listener actor: the MLLP listener of the HL7 bridge as a Ray actor.

Like the DICOM listener it depends only on its stores: the context store it writes (on the
configured backend: ``storage.ledger``) and the ledger it audits into. Ray restarts it (and so
rebinds the port) if it dies; the sender resends what was not acknowledged, and the inbox keeps
it from being applied twice. Its health reports the MLLP server's thread and both of the
listener's loops (the audit pump, the WAL checkpoint).
"""

from __future__ import annotations

import ray

from actors.adapters.hl7_inbox import Hl7Listener
from actors.stage import ActorShell
from core.config import Hl7Config, StorageConfig
from core.health import ActorHealth
from state.context_store import open_context

__all__ = ["Hl7ListenerActor"]


@ray.remote
class Hl7ListenerActor(ActorShell):
    """Ray shell around ``Hl7Listener``."""

    name = "hl7_listener"

    def __init__(self, cfg: Hl7Config, storage: StorageConfig, hash_key: bytes, log_level: str = "INFO") -> None:
        ledger = self._open_ledger(storage, log_level)
        Hl7Listener.tune_process()
        context = open_context(storage, writer=True, group_max=cfg.batch_max)
        self._listener = Hl7Listener(cfg, context, ledger, hash_key)
        self._listener.start()
        self._loops.extend(self._listener.loops)  # started by the listener; stopped twice is fine
        self._start_heartbeat()

    def port(self) -> int:
        """Return the bound MLLP port."""
        return self._listener.port

    def _counters(self) -> tuple[int, int, int, str]:
        counts = self._listener.counts
        return (
            counts["applied"] + counts["duplicate"],
            counts["invalid"] + counts["conflict"] + counts["rejected"] + counts["failed"],
            0,
            "",
        )

    def health(self) -> ActorHealth:
        """The MLLP server's thread, the audit pump and the checkpoint loop."""
        base = super().health()
        return ActorHealth(
            base.actor,
            base.pid,
            base.processed,
            base.failures,
            base.in_flight,
            base.last_error,
            (self._listener.server_health(), *base.loops),
        )

    def stop(self) -> None:
        """Close the port; audit what is left."""
        super().stop()
        self._listener.stop()
