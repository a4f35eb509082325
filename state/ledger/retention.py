"""What retention may purge of the spool, and the record that it did (``core.retention``).

The ledger is where "its study's results were delivered" is known: an instance is a spool
candidate only while its job (the latest version that covers it) is ``delivered``, and its
clock starts when that job got there. A purged instance gets ``purged_at`` and is marked
discarded, so a later version of its study (a late arrival) leaves it out rather than look for
a file that is gone; a held quarantine entry it belonged to is closed as discarded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.audit import AuditEvent
from state.db import Database, Tx, chunks, marks
from state.ledger.audit import append_events

__all__ = ["RETENTION_ACTOR", "Retention", "SpoolItem"]

RETENTION_ACTOR = "system:retention"


@dataclass(frozen=True, slots=True)
class SpoolItem:
    """One spool file retention may delete (UIDs and a path: no PHI)."""

    sop_instance_uid: str
    path: str
    since: float
    """Delivery (spool) or hold (quarantine) time: when its retention clock started."""


class Retention:
    """The purge loop's view of the ledger."""

    def __init__(self, db: Database, cell: str = "") -> None:
        """Args:
        db: The ledger database.
        cell: This process's ingress cell: only its instances' files are on this machine.
        """
        self._db = db
        self._cell = cell

    def delivered(self, before: float, limit: int = 1000) -> list[SpoolItem]:
        """Unpurged instances whose job was delivered at or before ``before``, oldest first."""
        with self._db.read() as tx:
            rows = tx.all(
                "SELECT i.sop_instance_uid, i.path, j.updated_at AS since FROM instances i"
                " JOIN jobs j ON j.job_id = i.job_id WHERE j.state = 'delivered'"
                " AND j.updated_at <= ? AND i.purged_at IS NULL AND i.cell = ? ORDER BY j.updated_at LIMIT ?",
                (before, self._cell, limit),
            )
        return [SpoolItem(r["sop_instance_uid"], r["path"], float(r["since"])) for r in rows]

    def quarantined(self, before: float, limit: int = 1000) -> list[SpoolItem]:
        """Unpurged instances held (or discarded) in quarantine since at or before ``before``."""
        with self._db.read() as tx:
            rows = tx.all(
                "SELECT q.sop_instance_uid, i.path, q.created_at AS since FROM quarantine q"
                " JOIN instances i ON i.sop_instance_uid = q.sop_instance_uid"
                " WHERE q.state IN ('held', 'discarded') AND q.created_at <= ?"
                " AND i.purged_at IS NULL AND i.cell = ? ORDER BY q.created_at LIMIT ?",
                (before, self._cell, limit),
            )
        return [SpoolItem(r["sop_instance_uid"], r["path"], float(r["since"])) for r in rows]

    def mark_purged(self, sop_uids: Sequence[str], events: Sequence[AuditEvent], now: float) -> None:
        """Record that these instances' files are gone, with the round's audit event, in one
        transaction (``events`` may be appended with no instances: rejected data, HL7)."""

        def work(tx: Tx) -> None:
            for part in chunks(list(sop_uids)):
                where = f"sop_instance_uid IN ({marks(len(part))})"
                tx.execute(
                    f"UPDATE instances SET purged_at = ?, override = 'discarded', reason = 'retention' WHERE {where}",
                    (now, *part),
                )
                tx.execute(
                    "UPDATE quarantine SET state = 'discarded', decided_by = ?, decided_at = ?,"
                    f" decision_reason = 'retention', updated_at = ? WHERE state = 'held' AND {where}",
                    (RETENTION_ACTOR, now, now, *part),
                )
            append_events(tx, events, now)

        self._db.run(work)
