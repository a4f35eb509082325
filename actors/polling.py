"""A background round in a daemon thread: the shape the evidence watcher and the pre-validator share."""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["PollingLoop"]

logger = logging.getLogger(__name__)


class PollingLoop:
    """Calls ``run_once`` every ``poll_s`` seconds in a daemon thread until ``stop``.

    A round that raises is logged and the loop goes on: a busy ledger or an odd PACS answer
    must not end the thread.
    """

    thread_name = "polling-loop"

    def __init__(self, poll_s: float) -> None:
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """One round; returns how many items it handled."""
        raise NotImplementedError

    def start(self) -> None:
        """Run in a daemon thread until ``stop``."""
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (waits up to 10 s for the round in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - the loop must survive a bad round
                logger.exception("%s: round failed", self.thread_name)
            self._stop.wait(max(0.0, self._poll_s - (time.monotonic() - started)))
