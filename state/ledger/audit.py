"""The audit log: events appended in the same transaction as what they describe, hash-chained.

SQLite chains each event as it is appended (``BEGIN IMMEDIATE`` already serialises writers).
PostgreSQL appends events unchained and ``chain`` links them afterwards in commit order, one
chainer at a time (an advisory lock held only while chaining): a chain lock held through every
stage's commit would serialise the cluster's fsyncs. The auditor chains every half second, and
every read of the trail chains first, so what is shown or verified is always chained.

Whoever chains also signs (``core.audit_seal``): the appender on SQLite, the chainer on
PostgreSQL, with this process's key (``use_seal``: one signing key per process, installed when
the ledger opens, since ``append_events`` runs inside other repositories' transactions). The
database refuses UPDATE and DELETE on the trail (migration 0011), except, on PostgreSQL, the
chainer's one UPDATE that fills in an unchained row's place and signature. What is shown is
read from the signed canonical JSON; ``verify`` also checks the plain columns against it, and
the chain against the exported head (``export_head``), so deleting the newest rows shows.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from functools import partial

from core.audit import (
    GENESIS,
    AuditEntry,
    AuditEvent,
    ChainBreak,
    ChainReport,
    StoredEvent,
    chain_hash,
    check_chain,
    entry_from_canonical,
)
from core.audit_seal import AuditSigner, ChainHead
from state.audit_seal import AuditSeal, read_head, write_head
from state.db import Database, Row, Tx

__all__ = ["AuditLog", "append_events", "use_seal"]

_CHAIN_BATCH = 5000
_VERIFY_PAGE = 250
"""Entries a check reads at a time. The auditor reads the whole trail every round; its memory
follows the biggest transient, so a page is small (bench_soak: 2,000 entries, two pages alive
while the next was fetched, grew the auditor's RSS by ~18 MB over its first minutes)."""
_seal_lock = threading.Lock()
_process_seal: list[AuditSeal] = []


def use_seal(seal: AuditSeal) -> None:
    """Sign the entries this process appends with ``seal`` (the ledger installs it on open)."""
    with _seal_lock:
        _process_seal[:] = [seal]


def _current_seal() -> AuditSeal:
    if not _process_seal:
        raise RuntimeError("audit: no signing key installed; open the ledger with open_ledger")
    return _process_seal[0]


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
    signer = _current_seal().signer
    last = tx.one("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
    seq, prev = (int(last["seq"]), str(last["hash"])) if last else (0, GENESIS)
    rows = []
    for values in batch:
        seq += 1
        digest = chain_hash(prev, str(values[-1]))
        rows.append((seq, *values, prev, digest, signer.key_id, signer.sign(seq, digest)))
        prev = digest
    tx.executemany(
        f"INSERT INTO audit (seq, {columns}, prev_hash, hash, key_id, sig) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows
    )


def _chain(tx: Tx, signer: AuditSigner) -> int:
    """Link and sign unchained events (PostgreSQL) after the newest chained one, in commit order."""
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
        links.append((seq, prev, digest, signer.key_id, signer.sign(seq, digest), row["event_id"]))
        prev = digest
    tx.executemany("UPDATE audit SET seq = ?, prev_hash = ?, hash = ?, key_id = ?, sig = ? WHERE event_id = ?", links)
    return len(links)


def _stored(r: Row) -> StoredEvent:
    columns = (r["type"], r["actor"], r["study_uid"], r["sop_instance_uid"], r["job_id"], r["detail"], r["at"])
    return StoredEvent(int(r["seq"]), r["canonical"], r["prev_hash"], r["hash"], r["key_id"], r["sig"], columns)


class AuditLog:
    """Append, chain, read and verify the audit trail."""

    def __init__(self, db: Database, seal: AuditSeal | None = None) -> None:
        """Args:
        db: The ledger database.
        seal: The signing key, trusted keys and head export; installed for this process.
            ``None``: the one installed already (a second ledger object on the same store).
        """
        self._db = db
        if seal is not None:
            use_seal(seal)
        self._own_seal = seal
        self._trusted: tuple[int, str] | None = None
        """``(seq, hash)`` of the newest entry whose signature a check verified."""

    @property
    def seal(self) -> AuditSeal:
        """The signing key, trusted keys and head export this log uses."""
        return self._own_seal or _current_seal()

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
        chain = partial(_chain, signer=self.seal.signer)
        while True:
            linked = self._db.run(chain)
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
                f"SELECT seq, canonical FROM audit WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?", [*args, limit]
            )
        return [entry_from_canonical(int(r["seq"]), r["canonical"]) for r in rows]

    def verify(self, head: ChainHead | None = None, *, full: bool = True) -> ChainBreak | None:
        """Chain what is pending, then check the whole trail; ``None`` when intact (``check``)."""
        return self.check(head, full=full).broken

    def check(self, head: ChainHead | None = None, *, full: bool = True) -> ChainReport:
        """Chain what is pending, then check every entry: its place, hash, columns, signature.

        Args:
            head: The exported head to check against; ``None``: the one in the head file, if any.
            full: ``False`` checks signatures only after the newest entry this object verified
                before (older ones by hash: the auditor's periodic round).
        """
        self.chain()
        try:
            head = head or read_head(self.seal.head_file)
        except (OSError, ValueError) as exc:
            return ChainReport(ChainBreak(0, f"exported chain head unreadable: {exc}"), 0, 0, GENESIS, 0, False)
        trusted = None if full else self._trusted
        report = check_chain(self._stored(), self.seal.keys, self.legacy_until(), head, trusted)
        if report.broken is None and report.last_seq:
            self._trusted = (report.last_seq, report.last_hash)
        return report

    def legacy_until(self) -> int:
        """The last entry from before signing started (0: none; migration 0011 recorded it)."""
        with self._db.read() as tx:
            row = tx.one("SELECT until_seq FROM audit_legacy")
        return int(row["until_seq"]) if row else 0

    def head(self, now: float, upto: int | None = None) -> ChainHead | None:
        """The newest signed entry (up to ``upto``, the last one verified) as a head to export;
        ``None``: nothing signed yet."""
        self.chain()
        legacy = self.legacy_until()
        with self._db.read() as tx:
            row = tx.one(
                "SELECT seq, hash, key_id, sig FROM audit WHERE sig IS NOT NULL AND seq <= ? ORDER BY seq DESC LIMIT 1",
                (upto if upto is not None else 2**62,),
            )
        if row is None:
            return None
        return ChainHead(int(row["seq"]), row["hash"], row["key_id"], row["sig"], legacy, now)

    def export_head(self, now: float, upto: int | None = None) -> ChainHead | None:
        """Write the newest head (up to ``upto``) out of the ledger (head file, syslog); return it."""
        head = self.head(now, upto)
        if head is not None:
            write_head(self.seal, head)
        return head

    def _stored(self) -> Iterator[StoredEvent]:
        """Every chained entry with its columns, in order, read a page at a time: the whole
        trail at once held the auditor's memory at the trail's size, at every check (bench_soak)."""
        after = 0
        while True:
            with self._db.read() as tx:
                rows = tx.all(
                    "SELECT seq, canonical, prev_hash, hash, key_id, sig, type, actor, study_uid,"
                    " sop_instance_uid, job_id, detail, at FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, _VERIFY_PAGE),
                )
            full = len(rows) == _VERIFY_PAGE
            after = int(rows[-1]["seq"]) if rows else after
            rows.reverse()
            while rows:  # hand each entry on and drop it: one page alive, not two
                yield _stored(rows.pop())
            if not full:
                return
