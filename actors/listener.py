"""Listener actor: the DICOM SCP as a Ray actor (depends only on its disk and the ledger)."""

from __future__ import annotations

import ray

from actors.adapters.cells import read_spooled
from actors.adapters.dimse import Listener
from actors.polling import Loop
from actors.stage import ActorShell
from core.config import AssemblyConfig, ListenerConfig, StorageConfig
from core.health import ActorHealth, LoopHealth
from state.layout import VarLayout
from state.retention_purge import Purger, context_opener

__all__ = ["ListenerActor"]


@ray.remote
class ListenerActor(ActorShell):
    """Ray shell around ``Listener``; Ray restarts it (and so rebinds the port) if it dies.

    The first listener of each cell (``purges``) also runs the cell's retention loop
    (``state.retention_purge``): the cell's files are on its node, in its var dir, and only
    its instances are considered (``instances.cell``); one machine is the one cell.
    """

    name = "listener"

    def __init__(
        self,
        cfg: ListenerConfig,
        storage: StorageConfig,
        quiet_period_s: float,
        hash_key: bytes,
        log_level: str = "INFO",
        assembly: AssemblyConfig | None = None,
        share_port: bool = False,
        purges: bool = False,
    ) -> None:
        ledger = self._open_ledger(storage, log_level)
        layout = VarLayout.at(storage.var_dir)
        self._spool = layout.spool
        self._listener = Listener(
            cfg,
            layout.spool,
            layout.rejected,
            ledger,
            quiet_period_s,
            self._clock,
            hash_key=hash_key,
            assembly=assembly,
        )
        self._listener.start(shared=share_port)  # pacsai up's early listener may hold the port
        if purges:
            self._start_retention(storage)
        self._start_heartbeat()

    def _start_retention(self, storage: StorageConfig) -> None:
        """This cell's purge rounds (``storage.retention``), each audited, when any store purges."""
        purger = Purger(storage, self._ledger, context_opener(storage))
        if purger.active:
            purge = purger.round
            loop = Loop(
                "retention",
                lambda: purge(self._clock.now(), stopping=lambda: loop.stopping),
                storage.retention.period_s,
                clock=self._clock,
            )
            self._add_loop(loop)

    def port(self) -> int:
        """Return the bound DIMSE port."""
        return self._listener.port

    def read_spooled(self, paths: list[str]) -> list[bytes]:
        """The bytes of spool files of this cell, for the cell that completes their study.

        Raises:
            PermissionError: A path is not in this cell's spool.
            OSError: A file cannot be read.
        """
        return read_spooled(self._spool, paths, self._ledger.keyring)

    def health(self) -> ActorHealth:
        """The DICOM server's thread, and what it received."""
        base = super().health()
        server = LoopHealth(
            "dicom-server",
            self._listener.serving,
            self._listener.received,
            self._listener.failed,
            last_work_at=self._listener.last_received_at,
        )
        return ActorHealth(
            base.actor, base.pid, self._listener.received, self._listener.failed, 0, "", (server, *base.loops)
        )

    def stop(self) -> None:
        """Close the port."""
        super().stop()
        self._listener.stop()
