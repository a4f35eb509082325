"""Ports: what core logic needs from the outside world, as Protocols.

Actors inject real adapters (``actors.adapters``); unit tests inject fakes (``tests.fakes``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from core.completeness import PacsCounts
    from core.priors import SeriesRecord, StudyQuery, StudyRecord

__all__ = ["Clock", "PacsQuery"]


class Clock(Protocol):
    """Wall-clock time in seconds since the epoch."""

    def now(self) -> float:
        """Return the current time."""
        ...


class PacsQuery(Protocol):
    """C-FIND at the PACS (Study Root Query/Retrieve Information Model, PS3.4 C.6.2).

    Every method raises ``DependencyUnavailable`` when the PACS cannot be reached or refuses.
    """

    def find_studies(self, query: StudyQuery) -> list[StudyRecord]:
        """Return the studies matching a STUDY-level query."""
        ...

    def find_series(self, study_uid: str) -> list[SeriesRecord]:
        """Return the series of one study (SERIES level)."""
        ...

    def study_counts(self, study_uid: str) -> PacsCounts:
        """Return Number of Study / Series Related Instances of one study."""
        ...
