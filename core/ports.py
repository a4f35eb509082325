"""Ports: what core logic needs from the outside world, as Protocols.

Actors inject real adapters (``actors.adapters``); unit tests inject fakes (``tests.fakes``).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Clock"]


class Clock(Protocol):
    """Wall-clock time in seconds since the epoch."""

    def now(self) -> float:
        """Return the current time."""
        ...
