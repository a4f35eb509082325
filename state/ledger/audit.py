"""The audit log: events appended in the same transaction as what they describe, hash-chained.

SQLite chains each event as it is appended (``BEGIN IMMEDIATE`` already serialises writers).
PostgreSQL appends events unchained and ``chain`` links them afterwards in commit order, one
chainer at a time (an advisory lock held only while chaining): a chain lock held through every
stage's commit would serialise the cluster's fsyncs. The auditor chains every half second, and
every read of the trail chains first, so what is shown or verified is always chained.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from core.audit import GENESIS, AuditEntry, AuditEvent, ChainBreak, chain_hash, verify_chain
from state.db import Database, Row, Tx

__all__ = ["AuditLog", "append_events"]

_CHAIN_BATCH = 5000
_VERIFY_PAGE = 2000


def _row(event: AuditEvent, now: float) -> tuple[object, ...]:
    return (
        now,
        str(event.type),
        event.actor,
        event.study_uid,
        event.sop_instance_uid,
        event.job_id,
        json.dumps(event.detail, sort_keys=True, default=str),
        event.canonical(now),
    )


def append_events(tx: Tx, events: Iterable[AuditEvent], now: float) -> None:
    """Append events inside ``tx`` (call it as the last step of a transaction)."""
    batch = [_row(e, now) for e in events]
    if not batch:
        return
    columns = "at, type, actor, study_uid, sop_instance_uid, job_id, detail, canonical"
    if not tx.chains_inline:
        tx.executemany(f"INSERT INTO audit ({columns}) VALUES (?,?,?,?,?,?,?,?)", batch)
        return
    last = tx.one("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
    seq, prev = (int(last["seq"]), str(last["hash"])) if last else (0, GENESIS)
    rows = []
    for values in batch:
        seq += 1
        digest = chain_hash(prev, str(values[-1]))
        rows.append((seq, *values, prev, digest))
        prev = digest
    tx.executemany(f"INSERT INTO audit (seq, {columns}, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)


def _chain(tx: Tx) -> int:
    """Link unchained events (PostgreSQL) after the newest chained one, in commit order."""
    tx.lock_chain()
    last = tx.one("SELECT seq, hash FROM audit WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1")
    seq, prev = (int(last["seq"]), str(last["hash"])) if last else (0, GENESIS)
    pending = tx.all(
        "SELECT event_id, canonical FROM audit WHERE seq IS NULL ORDER BY event_id LIMIT ?", (_CHAIN_BATCH,)
    )
    links = []
    for row in pending:
        seq += 1
        digest = chain_hash(prev, row["canonical"])
        links.append((seq, prev, digest, row["event_id"]))
        prev = digest
    tx.executemany("UPDATE audit SET seq = ?, prev_hash = ?, hash = ? WHERE event_id = ?", links)
    return len(links)


def _entry(row: Row) -> AuditEntry:
    return AuditEntry(
        int(row["seq"]),
        float(row["at"]),
        row["type"],
        row["actor"],
        row["study_uid"],
        row["sop_instance_uid"],
        None if row["job_id"] is None else int(row["job_id"]),
        json.loads(row["detail"]),
    )


class AuditLog:
    """Append, chain, read and verify the audit trail."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def append(self, events: Iterable[AuditEvent], now: float) -> None:
        """Append events that are not tied to a state change, in their own transaction."""
        batch = list(events)
        if batch:
            self._db.run(lambda tx: append_events(tx, batch, now))

    def chain(self) -> int:
        """Chain the events committed since the last call; return how many (0 on SQLite)."""
        done = 0
        with self._db.read() as tx:
            if tx.chains_inline:
                return 0
        while True:
            linked = self._db.run(_chain)
            done += linked
            if linked < _CHAIN_BATCH:
                return done

    def events(
        self, study_uid: str | None = None, limit: int = 1000, *, job_id: int | None = None, after: int = 0
    ) -> list[AuditEntry]:
        """Stored events in chain order, oldest first.

        Args:
            study_uid: Only events of this study.
            limit: At most this many.
            job_id: Only events of this job (give its study too: that column is indexed).
            after: Only events after this sequence number (the next page: the last one shown).
        """
        self.chain()
        where: list[str] = ["seq IS NOT NULL"]
        args: list[object] = []
        for clause, value in (("study_uid = ?", study_uid or None), ("job_id = ?", job_id), ("seq > ?", after or None)):
            if value is not None:
                where.append(clause)
                args.append(value)
        with self._db.read() as tx:
            rows = tx.all(
                "SELECT seq, at, type, actor, study_uid, sop_instance_uid, job_id, detail"
                f" FROM audit WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                [*args, limit],
            )
        return [_entry(r) for r in rows]

    def verify(self) -> ChainBreak | None:
        """Chain what is pending, then check the whole hash chain; ``None`` when intact."""
        self.chain()
        return verify_chain(self._chained())

    def _chained(self) -> Iterator[tuple[int, str, str, str]]:
        """Every chained event ``(seq, canonical, prev_hash, hash)`` in order, read a page at a
        time: the whole trail at once held the auditor's memory at the trail's size, at every
        check (bench_soak)."""
        after = 0
        while True:
            with self._db.read() as tx:
                rows = tx.all(
                    "SELECT seq, canonical, prev_hash, hash FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, _VERIFY_PAGE),
                )
            yield from ((int(r["seq"]), r["canonical"], r["prev_hash"], r["hash"]) for r in rows)
            if len(rows) < _VERIFY_PAGE:
                return
            after = int(rows[-1]["seq"])
