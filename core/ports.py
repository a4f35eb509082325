"""Ports: what core logic needs from the outside world, as Protocols.

Actors inject real adapters (``actors.adapters``); unit tests inject fakes (``tests.fakes``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from core.completeness import PacsCounts
    from core.order_status import OrderStatus
    from core.priors import SeriesRecord, StudyQuery, StudyRecord

__all__ = ["Clock", "OrderStatusSource", "PacsQuery"]


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


@runtime_checkable
class OrderStatusSource(Protocol):
    """The RIS's latest order status of a study, as the HL7 context bridge keeps it.

    One small read, no patient identity: the status and when it was received
    (``core.order_status``). The assembler asks only for senders whose rule trusts
    ``order_status`` evidence.
    """

    def order_status(self, study_uid: str, accession_key: str) -> OrderStatus | None:
        """Return the latest status of the study's order (by Study Instance UID, else by the
        keyed hash of its accession number), or ``None`` when no order is known."""
        ...
