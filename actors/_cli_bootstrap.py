"""``pacsai up``'s early listener: C-STORE accepted and made durable while Ray starts.

Starting Ray takes 4-8 s on a two-core machine before any actor can exist, so a listener
actor cannot accept within seconds of ``pacsai up`` however fast it starts itself. The early
listener is the same ``Listener`` (the same intake: spool, group commit, ledger, answered only
once durable) run in the ``pacsai up`` process itself, on the configured port with
``SO_REUSEPORT``. The listener actors bind the same port the same way; once they answer, the
early listener stops accepting and lets its open associations finish (``Listener.drain``):
the actors take every association from then on. A connection queued on the early socket but
not yet accepted when it closes is reset, and its sender retries; nothing acknowledged is
lost (it is in the spool and the ledger, where the stages find it).

Not used on a cluster (each ingress node's listeners are actors on that node) nor with port 0
(no fixed port to hand over). A port another process holds is refused here, before Ray
starts, with the port named (``SO_REUSEPORT`` would otherwise let a second ``pacsai up``
share it silently).
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass
from typing import Any

from core.config import AppConfig
from core.errors import ConfigError

__all__ = ["EarlyListener", "port_in_use"]

logger = logging.getLogger(__name__)


def _port_free(host: str, port: int) -> bool:
    """Whether nothing listens on ``host:port`` (a plain bind, no ``SO_REUSEPORT``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as socketserver binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def port_in_use(cfg: AppConfig) -> None:
    """Refuse a fixed listener port another process holds, naming it (cheap: before Ray).

    Raises:
        ConfigError: The port is in use.
    """
    if cfg.cluster is None and cfg.listener.port != 0 and not _port_free(cfg.listener.host, cfg.listener.port):
        raise ConfigError(
            "listener",
            [
                f"listener.port: {cfg.listener.host}:{cfg.listener.port} is in use; expected a free port "
                "(is another pacsai up running?)"
            ],
        )


@dataclass
class EarlyListener:
    """The listener of the ``pacsai up`` process until the listener actors answer."""

    listener: Any
    ledger: Any

    @classmethod
    def start(cls, cfg: AppConfig, key: bytes) -> EarlyListener | None:
        """Start it where it applies (one machine, a fixed port); ``None`` where not.

        Raises:
            ConfigError: The port is already held by another process.
        """
        if cfg.cluster is not None or cfg.listener.port == 0:
            return None
        port_in_use(cfg)
        from actors.adapters.dimse import Listener  # pynetdicom: only where the early listener runs
        from state.layout import VarLayout
        from state.ledger import open_ledger

        ledger = open_ledger(cfg.storage)
        layout = VarLayout.at(cfg.storage.var_dir)
        listener = Listener(
            cfg.listener,
            layout.spool,
            layout.rejected,
            ledger,
            cfg.assembly.quiet_period_s,
            hash_key=key,
            assembly=cfg.assembly,
        )
        listener.start(shared=True)
        logger.info("early listener on %s:%d until the listener actors answer", cfg.listener.host, listener.port)
        return cls(listener, ledger)

    @property
    def received(self) -> int:
        """Instances it made durable."""
        return int(self.listener.received)

    def hand_over(self, drain_s: float = 30.0) -> int:
        """Stop accepting, let open associations finish, close; return how many were cut off."""
        try:
            return int(self.listener.drain(drain_s))
        finally:
            self.ledger.close()
