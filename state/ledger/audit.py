"""The audit log: hash-chained events appended in the same transaction as what they describe."""

from __future__ import annotations

import json
from collections.abc import Iterable

from core.audit import GENESIS, AuditEntry, AuditEvent, ChainBreak, chain_hash, verify_chain
from state.db import Database, Row, Tx

__all__ = ["AuditLog", "append_events"]


def append_events(tx: Tx, events: Iterable[AuditEvent], now: float) -> None:
    """Append events to the chain inside ``tx``.

    Call it as the last step of a transaction: on PostgreSQL it takes the chain's lock, held
    until commit, and a transaction that holds it must not wait for anything else.
    """
    batch = list(events)
    if not batch:
        return
    tx.lock_audit()
    last = tx.one("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
    seq, prev = (int(last["seq"]), str(last["hash"])) if last else (0, GENESIS)
    rows = []
    for event in batch:
        seq += 1
        canonical = event.canonical(now)
        digest = chain_hash(prev, canonical)
        rows.append((seq, now, str(event.type), event.actor, event.study_uid,
                     event.sop_instance_uid, event.job_id,
                     json.dumps(event.detail, sort_keys=True, default=str), canonical, prev, digest))
        prev = digest
    tx.executemany(
        "INSERT INTO audit (seq, at, type, actor, study_uid, sop_instance_uid, job_id, detail,"
        " canonical, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        rows,
    )


def _entry(row: Row) -> AuditEntry:
    return AuditEntry(int(row["seq"]), float(row["at"]), row["type"], row["actor"],
                      row["study_uid"], row["sop_instance_uid"],
                      None if row["job_id"] is None else int(row["job_id"]),
                      json.loads(row["detail"]))


class AuditLog:
    """Append, read and verify the audit trail."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def append(self, events: Iterable[AuditEvent], now: float) -> None:
        """Append events that are not tied to a state change, in their own transaction."""
        batch = list(events)
        if batch:
            self._db.run(lambda tx: append_events(tx, batch, now))

    def events(self, study_uid: str | None = None, limit: int = 1000) -> list[AuditEntry]:
        """Stored events, oldest first, optionally of one study."""
        where, args = ("WHERE study_uid = ?", [study_uid]) if study_uid else ("", [])
        with self._db.read() as tx:
            rows = tx.all(
                "SELECT seq, at, type, actor, study_uid, sop_instance_uid, job_id, detail"
                f" FROM audit {where} ORDER BY seq LIMIT ?", [*args, limit],
            )
        return [_entry(r) for r in rows]

    def verify(self) -> ChainBreak | None:
        """Check the whole hash chain; ``None`` when intact."""
        with self._db.read() as tx:
            rows = tx.all("SELECT seq, canonical, prev_hash, hash FROM audit ORDER BY seq")
        return verify_chain((int(r["seq"]), r["canonical"], r["prev_hash"], r["hash"]) for r in rows)
