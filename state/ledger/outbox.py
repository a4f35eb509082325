"""The outbox: our result objects waiting for (or after) delivery to the PACS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.audit import AuditEvent
from core.ledger import QueueOutbox, WithdrawOutbox
from core.results import DeliveryState, OutboxEntry, OutboxItem, OutputKind
from core.versions import VersionState
from state.db import Database, Row, Tx
from state.ledger._rows import equal_to
from state.ledger.audit import append_events

__all__ = ["Outbox", "PublishedResult", "apply_queue", "apply_withdraw"]

_COLUMNS = (
    "o.item_id, o.job_id, o.sop_instance_uid, o.sop_class_uid, o.series_uid, o.kind, o.family,"
    " o.path, o.state, o.attempts, o.last_error, o.created_at, o.delivered_at"
)


def apply_queue(tx: Tx, job_id: int, effect: QueueOutbox, now: float) -> None:
    """Queue result objects (their files are already durable) for the job."""
    tx.executemany(
        "INSERT INTO outbox (job_id, sop_instance_uid, sop_class_uid, kind, family, path,"
        " created_at, series_uid) VALUES (?,?,?,?,?,?,?,?)"
        " ON CONFLICT (job_id, sop_instance_uid) DO NOTHING",
        [
            (job_id, i.sop_instance_uid, i.sop_class_uid, i.kind.value, i.family, i.path, now, i.series_instance_uid)
            for i in effect.items
        ],
    )


def apply_withdraw(tx: Tx, job_id: int, effect: WithdrawOutbox) -> None:
    """Mark the job's pending items of one family superseded: they are never sent."""
    tx.execute(
        "UPDATE outbox SET state = ? WHERE job_id = ? AND family = ? AND state = ?",
        (DeliveryState.SUPERSEDED.value, job_id, effect.family, DeliveryState.PENDING.value),
    )


@dataclass(frozen=True, slots=True)
class PublishedResult:
    """A result object of ours that DICOMweb clients may find and read (QIDO-RS / WADO-RS)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    kind: OutputKind
    path: str
    created_at: float


def _entry(row: Row) -> OutboxEntry:
    item = OutboxItem(
        row["sop_instance_uid"],
        row["sop_class_uid"],
        row["series_uid"],
        OutputKind(row["kind"]),
        row["family"],
        row["path"],
    )
    return OutboxEntry(
        int(row["item_id"]),
        int(row["job_id"]),
        item,
        DeliveryState(row["state"]),
        int(row["attempts"]),
        row["last_error"],
        float(row["created_at"]),
        None if row["delivered_at"] is None else float(row["delivered_at"]),
        int(row.get("priority") or 0),
    )


class Outbox:
    """Result objects and their delivery state."""

    def __init__(self, db: Database, cell: str = "") -> None:
        self._db = db
        self._cell = cell

    def items(self, job_id: int, state: DeliveryState | None = None) -> list[OutboxEntry]:
        """The job's outbox entries, optionally only those in ``state``."""
        sql, args = f"SELECT {_COLUMNS} FROM outbox o WHERE o.job_id = ?", [job_id]
        if state is not None:
            sql, args = sql + " AND o.state = ?", [*args, state.value]
        with self._db.read() as tx:
            return [_entry(r) for r in tx.all(sql + " ORDER BY o.item_id", args)]

    def published(
        self,
        study_uid: str | None = None,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
        kind: OutputKind | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[PublishedResult]:
        """Our result objects, newest study first: every written SR, Parametric Map, key image
        and KOS that was not superseded (pending or delivered), narrowed by the UIDs given."""
        narrowed, given = equal_to(
            (
                ("j.study_uid", study_uid),
                ("o.series_uid", series_uid),
                ("o.sop_instance_uid", sop_instance_uid),
                ("o.kind", kind.value if kind is not None else None),
            )
        )
        where, args = ["o.state != ?", *narrowed], [DeliveryState.SUPERSEDED.value, *given]
        sql = (
            "SELECT j.study_uid, o.series_uid, o.sop_instance_uid, o.sop_class_uid, o.kind, o.path,"
            " o.created_at FROM outbox o JOIN jobs j ON j.job_id = o.job_id WHERE "
            + " AND ".join(where)
            + " ORDER BY o.created_at DESC, o.item_id DESC LIMIT ? OFFSET ?"
        )
        with self._db.read() as tx:
            rows = tx.all(sql, [*args, limit, offset])
        return [
            PublishedResult(
                r["study_uid"],
                r["series_uid"],
                r["sop_instance_uid"],
                r["sop_class_uid"],
                OutputKind(r["kind"]),
                r["path"],
                float(r["created_at"]),
            )
            for r in rows
        ]

    def mark_delivered(self, item_id: int, now: float, event: AuditEvent) -> None:
        """Record that the PACS answered success for one item, with its audit event; an SR's
        version is then ``delivered`` (``core.versions``) in the same transaction."""

        def done(tx: Tx) -> None:
            tx.execute(
                "UPDATE outbox SET state = 'delivered', delivered_at = ?, attempts = attempts + 1 WHERE item_id = ?",
                (now, item_id),
            )
            tx.execute(
                "UPDATE sr_results SET state = ?, updated_at = ? WHERE sop_instance_uid IN"
                " (SELECT sop_instance_uid FROM outbox WHERE item_id = ? AND kind = ?)",
                (VersionState.DELIVERED.value, now, item_id, OutputKind.SR.value),
            )
            append_events(tx, [event], now)

        self._db.run(done)

    def note_failure(self, item_id: int, error: str) -> None:
        """Record a failed attempt for one item."""
        self._db.run(
            lambda tx: tx.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE item_id = ?", (error[:500], item_id)
            )
        )

    def for_ehr(self, delivered_since: float, limit: int = 100) -> list[OutboxEntry]:
        """SRs the PACS accepted that are not yet queued for the EHR, urgent first."""
        with self._db.read() as tx:
            rows = tx.all(
                f"SELECT {_COLUMNS}, j.priority FROM outbox o JOIN jobs j ON j.job_id = o.job_id"
                " WHERE o.state = 'delivered' AND o.kind = 'sr' AND o.ehr_queued = 0"
                " AND o.delivered_at >= ? AND j.cell = ? ORDER BY j.priority DESC, o.delivered_at LIMIT ?",
                (delivered_since, self._cell, limit),
            )
        return [_entry(r) for r in rows]

    def mark_ehr_queued(self, item_ids: Sequence[int]) -> None:
        """Record that these SRs' FHIR reports are in the EHR outbox."""
        self._db.run(
            lambda tx: tx.executemany("UPDATE outbox SET ehr_queued = 1 WHERE item_id = ?", [(i,) for i in item_ids])
        )
