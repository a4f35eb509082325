"""The one background-loop helper every actor uses, and the health it reports.

A ``Loop`` calls ``round()`` in a daemon thread until stopped. A round returns how many items it
handled; after a busy round the loop goes again at once when ``eager`` (a stage with a queue),
otherwise it waits its period. A round that raises is logged (the traceback once per distinct
error, then one line per failure), counted, and the loop waits ``max(period, 1 s)`` before the
next round: a ledger or PACS that is down never ends the thread, and never spins it either. The
idle wait between rounds may read the ledger too (a stage on PostgreSQL); its failure is
recorded the same way, without counting a round.
``health()`` says whether the thread really runs and when a round last did work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from actors.adapters.clock import SystemClock
from core.health import LoopHealth
from core.ports import Clock

__all__ = ["Loop", "SystemClock"]  # SystemClock re-exported for the actors

logger = logging.getLogger(__name__)

ERROR_WAIT_S = 1.0
"""Least wait after a failed round."""


class Loop:
    """A supervised background loop."""

    def __init__(
        self,
        name: str,
        round_: Callable[[], int],
        period_s: float,
        *,
        eager: bool = False,
        idle: Callable[[float], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        """Args:
        name: Shown in health, logs and the thread name.
        round_: One round; returns how many items it handled; may raise.
        period_s: Wait between rounds (after an idle round when ``eager``).
        eager: Run the next round at once after a round that handled something.
        idle: Waits up to its argument in seconds for work (default: a plain sleep that
            ``stop`` interrupts), e.g. a PostgreSQL ``LISTEN``.
        clock: Time source for the health timestamps.
        """
        self.name = name
        self._round = round_
        self._period = period_s
        self._eager = eager
        self._idle = idle
        self._clock = clock or SystemClock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._rounds = self._failures = 0
        self._last_round_at = self._last_work_at = 0.0
        self._last_error = ""
        self._logged: set[str] = set()

    @property
    def stopping(self) -> bool:
        """Whether ``stop`` was called (long rounds check it)."""
        return self._stop.is_set()

    def start(self) -> Loop:
        """Start the thread."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the round in progress (waits up to ``timeout_s``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def health(self) -> LoopHealth:
        """Whether the thread runs, and what its rounds did."""
        alive = self._thread is not None and self._thread.is_alive()
        with self._lock:
            return LoopHealth(
                self.name,
                alive,
                self._rounds,
                self._failures,
                self._last_round_at,
                self._last_work_at,
                self._last_error,
            )

    def run_once(self) -> int:
        """One round, recorded in health (the thread calls this; so may tests)."""
        try:
            done = self._round()
        except Exception as exc:  # the loop must outlive any failing round
            self._failed(exc)
            raise
        now = self._clock.now()
        with self._lock:
            self._rounds += 1
            self._last_round_at = now
            self._last_error = ""
            if done:
                self._last_work_at = now
        return done

    def _failed(self, exc: Exception, *, in_round: bool = True) -> None:
        error = f"{type(exc).__name__}: {exc}"[:500]
        with self._lock:
            self._rounds += int(in_round)
            self._failures += 1
            self._last_round_at = self._clock.now()
            self._last_error = error
        kind = type(exc).__name__
        if kind not in self._logged:
            self._logged.add(kind)
            logger.exception("%s: %s failed; retrying", self.name, "round" if in_round else "idle wait")
        else:
            logger.warning("%s: %s failed again: %s", self.name, "round" if in_round else "idle wait", error[:200])

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                done = self.run_once()
            except Exception:  # noqa: BLE001 - recorded by run_once; wait, then go on
                self._stop.wait(max(self._period, ERROR_WAIT_S))
                continue
            if done and self._eager:
                continue
            wait = max(0.0, self._period - (time.monotonic() - started))
            if self._idle is not None and not self._stop.is_set():
                try:
                    self._idle(wait)
                except Exception as exc:  # noqa: BLE001 - e.g. the ledger went down: record, wait, go on
                    self._failed(exc, in_round=False)
                    self._stop.wait(max(wait, ERROR_WAIT_S))
            else:
                self._stop.wait(wait)
