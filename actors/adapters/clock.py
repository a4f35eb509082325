"""The wall clock, as the ``core.ports.Clock`` port (tests inject ``tests.fakes.FakeClock``)."""

from __future__ import annotations

import time

__all__ = ["SystemClock"]


class SystemClock:
    """The wall clock (``core.ports.Clock``)."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()
