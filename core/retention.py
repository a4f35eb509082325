"""Retention: which stored data is past its keeping time, and may go (issue 13).

Pure decision logic: the purge loop (``state.retention_purge``, run by each cell's first listener) lists what
each store holds, with when it was stored and whether it is *settled*, and this decides what
goes. Settled is the store's own precondition, never waived by age:

- ``spool``: the instance's study had its results delivered (job ``delivered``); a spool file
  of a study still in work, failed or skipped is kept whatever its age.
- ``quarantine``: the held (or discarded) instance's hold began that long ago.
- ``rejected``: always settled (it is kept for inspection only).
- ``hl7_raw``: the message's receipt is in the audit trail (its raw bytes go; its idempotency
  row and content digest stay, so a re-send is still recognised).

``None`` as a store's days keeps it forever (the default): nothing is purged unless asked for.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from core.audit import AuditEvent
from core.types import AuditEventType

__all__ = ["Candidate", "DAY_S", "RetentionPolicy", "Store", "counts", "due", "purge_event"]

DAY_S = 86_400.0


class Store(enum.StrEnum):
    """The stores retention applies to."""

    SPOOL = "spool"
    QUARANTINE = "quarantine"
    REJECTED = "rejected"
    HL7_RAW = "hl7_raw"


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Days each store keeps its data (``None``: forever)."""

    days: Mapping[Store, float | None]

    @classmethod
    def of(
        cls,
        spool_after_delivery_days: float | None = None,
        quarantine_days: float | None = None,
        rejected_days: float | None = None,
        hl7_raw_days: float | None = None,
    ) -> RetentionPolicy:
        """A policy from the ``storage.retention`` fields."""
        return cls(
            {
                Store.SPOOL: spool_after_delivery_days,
                Store.QUARANTINE: quarantine_days,
                Store.REJECTED: rejected_days,
                Store.HL7_RAW: hl7_raw_days,
            }
        )

    @property
    def active(self) -> frozenset[Store]:
        """The stores that purge at all."""
        return frozenset(s for s, d in self.days.items() if d is not None)

    def cutoff(self, store: Store, now: float) -> float | None:
        """Data of ``store`` stored (or settled) at or before this time is due; ``None``: never."""
        days = self.days.get(store)
        return None if days is None else now - days * DAY_S


@dataclass(frozen=True, slots=True)
class Candidate:
    """One stored item: which store, its key (a path or row id, never PHI), when its retention
    clock started (stored, delivered or held), and whether its store's precondition holds."""

    store: Store
    key: str
    since: float
    settled: bool = True


def due(candidates: Iterable[Candidate], policy: RetentionPolicy, now: float) -> list[Candidate]:
    """The candidates past their store's retention and settled, in the order given."""
    out = []
    for c in candidates:
        cutoff = policy.cutoff(c.store, now)
        if cutoff is not None and c.settled and c.since <= cutoff:
            out.append(c)
    return out


def counts(purged: Iterable[Candidate]) -> Counter[str]:
    """How many items of each store went."""
    return Counter(str(c.store) for c in purged)


def purge_event(purged: Mapping[str, int], actor: str, failed: int = 0) -> AuditEvent | None:
    """The audit event of one purge round: counts per store, nothing that names anyone.

    ``None`` when nothing was purged and nothing failed (an idle round is not audited).
    """
    done = {str(k): n for k, n in sorted(purged.items()) if n}
    if not done and not failed:
        return None
    detail: dict[str, object] = {"kind": "retention", "counts": done}
    if failed:
        detail["failed"] = failed
    return AuditEvent(AuditEventType.DATA_PURGED, actor, detail=detail)
