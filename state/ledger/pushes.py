"""Pushes of critical findings (issue 12): the webhook outbox and the readers' cursors.

``alert_items`` (written with each SR version) is read in ``item_id`` order by two readers: the
API's server-sent events (``items_after`` from the replica's own position) and the webhook
dispatcher (``actors.alert_pusher``), whose position is the cursor ``webhooks`` in
``alert_cursors``. The dispatcher plans a batch in one transaction: one ``alert_pushes`` row per
item and role (``UNIQUE (item_id, role)``: planning the same batch twice, by two dispatchers
or after a crash, adds nothing) and the cursor moved past it (never backwards).

Sending is claimed, not locked through the HTTP call: ``claim_due`` moves a due push's
``next_at`` a lease ahead, so a second dispatcher does not send it meanwhile and a crashed one's
push is due again when the lease runs out. Delivery and give-up are recorded with their
``ALERT_PUSHED`` audit event in one transaction; neither touches a push no longer pending.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.audit import AuditEvent
from core.pushes import PushItem
from state.db import Database, Row, Tx, marks
from state.ledger.audit import append_events
from state.ledger.clinical import ITEM_COLUMNS, alert_item

__all__ = ["DuePush", "PushRecord", "Pushes"]

WEBHOOKS = "webhooks"
"""The webhook dispatcher's cursor."""


@dataclass(frozen=True, slots=True)
class DuePush:
    """A push claimed for sending.

    Attributes:
        push_id: Its row.
        role: The role paged.
        attempts: Attempts made before this one.
        item: The finding.
    """

    push_id: int
    role: str
    attempts: int
    item: PushItem


@dataclass(frozen=True, slots=True)
class PushRecord:
    """A push as stored (for status and tests)."""

    push_id: int
    item_id: int
    role: str
    state: str
    attempts: int
    last_error: str
    delivered_at: float | None


def _item(row: Row) -> PushItem:
    return PushItem(int(row["item_id"]), row["sr_uid"], row["study_uid"], alert_item(row), float(row["created_at"]))


class Pushes:
    """Reads ``alert_items`` in order; the webhook outbox and its cursor."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def items_after(self, item_id: int, limit: int = 500, *, critical_only: bool = False) -> list[PushItem]:
        """Alert items after ``item_id``, in order (``critical_only``: present critical findings)."""
        where = "a.item_id > ?"
        if critical_only:
            where += " AND a.critical = 1 AND a.present = 1 AND a.quality_flag = 0"
        with self._db.read() as tx:
            rows = tx.all(
                f"SELECT {ITEM_COLUMNS} FROM alert_items a WHERE {where} ORDER BY a.item_id LIMIT ?", (item_id, limit)
            )
        return [_item(r) for r in rows]

    def last_item_id(self) -> int:
        """The newest alert item's id (0: none yet)."""
        with self._db.read() as tx:
            row = tx.one("SELECT MAX(item_id) AS last FROM alert_items")
        return int(row["last"] or 0) if row else 0

    def cursor(self, name: str = WEBHOOKS) -> int:
        """How far the reader ``name`` has got (0: from the start)."""
        with self._db.read() as tx:
            row = tx.one("SELECT item_id FROM alert_cursors WHERE name = ?", (name,))
        return int(row["item_id"]) if row else 0

    def plan(self, upto: int, pushes: Sequence[tuple[int, str]], now: float, name: str = WEBHOOKS) -> int:
        """Queue ``(item_id, role)`` pushes and move the cursor to ``upto``, in one transaction.

        Returns:
            How many pushes were new.
        """

        def apply(tx: Tx) -> int:
            added = 0
            for item_id, role in pushes:
                added += tx.execute(
                    "INSERT INTO alert_pushes (item_id, role, next_at, created_at) VALUES (?,?,?,?)"
                    " ON CONFLICT (item_id, role) DO NOTHING",
                    (item_id, role, now, now),
                )
            tx.execute(
                "INSERT INTO alert_cursors (name, item_id) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET"
                " item_id = CASE WHEN excluded.item_id > alert_cursors.item_id THEN excluded.item_id"
                " ELSE alert_cursors.item_id END",
                (name, upto),
            )
            return added

        return self._db.run(apply)

    def claim_due(self, now: float, lease_s: float, limit: int = 50) -> list[DuePush]:
        """Pending pushes due by ``now``, oldest first, each claimed for ``lease_s`` seconds."""

        def claim(tx: Tx) -> list[DuePush]:
            ids = tx.all(
                "UPDATE alert_pushes SET next_at = ? WHERE push_id IN (SELECT push_id FROM alert_pushes"
                f" WHERE state = 'pending' AND next_at <= ? ORDER BY push_id LIMIT ?{tx.skip_locked})"
                " RETURNING push_id",
                (now + lease_s, now, limit),
            )
            if not ids:
                return []
            wanted = sorted(int(r["push_id"]) for r in ids)
            rows = tx.all(
                f"SELECT p.push_id, p.role, p.attempts, {ITEM_COLUMNS} FROM alert_pushes p"
                f" JOIN alert_items a ON a.item_id = p.item_id WHERE p.push_id IN ({marks(len(wanted))})"
                " ORDER BY p.push_id",
                wanted,
            )
            return [DuePush(int(r["push_id"]), r["role"], int(r["attempts"]), _item(r)) for r in rows]

        return self._db.run(claim)

    def mark_delivered(self, push_id: int, now: float, event: AuditEvent) -> bool:
        """Record a 2xx with its audit event; ``False`` if the push was no longer pending."""

        def done(tx: Tx) -> bool:
            changed = tx.execute(
                "UPDATE alert_pushes SET state = 'delivered', delivered_at = ?, attempts = attempts + 1,"
                " last_error = '' WHERE push_id = ? AND state = 'pending'",
                (now, push_id),
            )
            if changed:
                append_events(tx, [event], now)
            return bool(changed)

        return self._db.run(done)

    def note_failure(
        self, push_id: int, error: str, next_at: float, now: float, dead: AuditEvent | None = None
    ) -> None:
        """Record a failed attempt: due again at ``next_at``, or dead (with its audit event)."""

        def failed(tx: Tx) -> None:
            changed = tx.execute(
                "UPDATE alert_pushes SET attempts = attempts + 1, last_error = ?, next_at = ?, state = ?"
                " WHERE push_id = ? AND state = 'pending'",
                (error[:300], next_at, "dead" if dead is not None else "pending", push_id),
            )
            if changed and dead is not None:
                append_events(tx, [dead], now)

        self._db.run(failed)

    def records(self, item_id: int | None = None, limit: int = 1000) -> list[PushRecord]:
        """Pushes as stored, oldest first (of one item, when given)."""
        where, args = ("WHERE item_id = ?", [item_id]) if item_id is not None else ("", [])
        with self._db.read() as tx:
            rows = tx.all(
                "SELECT push_id, item_id, role, state, attempts, last_error, delivered_at FROM alert_pushes"
                f" {where} ORDER BY push_id LIMIT ?",
                [*args, limit],
            )
        return [
            PushRecord(
                int(r["push_id"]),
                int(r["item_id"]),
                r["role"],
                r["state"],
                int(r["attempts"]),
                r["last_error"],
                None if r["delivered_at"] is None else float(r["delivered_at"]),
            )
            for r in rows
        ]
