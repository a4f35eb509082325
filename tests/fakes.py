"""Fakes of core.ports for unit tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FakeClock:
    """A clock that only moves when told to."""

    t: float = 1_000_000.0

    def now(self) -> float:
        """Return the current fake time."""
        return self.t

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.t += seconds
