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

__all__ = ["JOBS_PAGE", "PageKey", "RETENTION_ACTOR", "Retention", "SpoolItem"]

RETENTION_ACTOR = "system:retention"
JOBS_PAGE = 200
"""Delivered jobs (studies) read per page of a purge round."""

PageKey = tuple[float, int]
"""Where a page of delivered jobs ended: ``(updated_at, job_id)`` of its last job."""


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

    def delivered(
        self, before: float, after: PageKey | None = None, jobs: int = JOBS_PAGE
    ) -> tuple[list[SpoolItem], PageKey | None]:
        """The unpurged instances of this cell of the next ``jobs`` jobs delivered at or before
        ``before``, oldest first, after ``after`` (a previous page's key; ``None``: from the
        oldest); and the key of this page (``None``: no job was left).

        Paged by job (``(updated_at, job_id)``, index ``jobs_by_state_updated``; a job's
        unpurged instances through ``instances_unpurged_by_job``), so a round walks the
        delivered history once however many pages it takes, and a page never ends inside a
        study.
        """
        start = after or (float("-inf"), -1)
        with self._db.read() as tx:
            found = tx.all(
                "SELECT job_id, updated_at FROM jobs WHERE state = 'delivered' AND updated_at <= ?"
                " AND (updated_at, job_id) > (?, ?) ORDER BY updated_at, job_id LIMIT ?",
                (before, *start, jobs),
            )
            if not found:
                return [], None
            since = {int(r["job_id"]): float(r["updated_at"]) for r in found}
            rows = []
            for part in chunks(list(since)):
                rows += tx.all(
                    "SELECT sop_instance_uid, path, job_id FROM instances WHERE purged_at IS NULL AND cell = ?"
                    f" AND job_id IN ({marks(len(part))})",
                    (self._cell, *part),
                )
        last = found[-1]
        items = sorted(
            (SpoolItem(r["sop_instance_uid"], r["path"], since[int(r["job_id"])]) for r in rows),
            key=lambda i: i.since,
        )
        return items, (float(last["updated_at"]), int(last["job_id"]))

    def quarantined(
        self, before: float, after: tuple[float, str] | None = None, limit: int = 500
    ) -> tuple[list[SpoolItem], tuple[float, str] | None]:
        """Unpurged instances held (or discarded) in quarantine since at or before ``before``,
        oldest first, after ``after`` (a previous page's key); and this page's key (``None``:
        none was left)."""
        start = after or (float("-inf"), "")
        with self._db.read() as tx:
            rows = tx.all(
                "SELECT q.sop_instance_uid, i.path, q.created_at AS since FROM quarantine q"
                " JOIN instances i ON i.sop_instance_uid = q.sop_instance_uid"
                " WHERE q.state IN ('held', 'discarded') AND q.created_at <= ?"
                " AND (q.created_at, q.sop_instance_uid) > (?, ?)"
                " AND i.purged_at IS NULL AND i.cell = ? ORDER BY q.created_at, q.sop_instance_uid LIMIT ?",
                (before, *start, self._cell, limit),
            )
        if not rows:
            return [], None
        items = [SpoolItem(r["sop_instance_uid"], r["path"], float(r["since"])) for r in rows]
        return items, (items[-1].since, items[-1].sop_instance_uid)

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
