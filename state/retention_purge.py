"""The purge loop's work (``core.retention`` decides, this deletes and records).

One round: spool files of delivered studies and of quarantined instances past their days
(the ledger says which: ``state.ledger.retention``), files under ``rejected/`` by age, and in
the context store the raw bytes of audited HL7 messages and the audited rejected heads. A file
is deleted first and recorded after (a crash between leaves a candidate whose file is gone:
the next round records it), and each step's counts go to the audit trail in the same
transaction as its ledger marks; nothing that names a patient is logged or audited. A round
goes in steps of ``PAGE`` items, ``PAUSE_S`` apart, until nothing due is left (``Purger``).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from core.config import StorageConfig
from core.retention import Candidate, RetentionPolicy, Store, counts, due, purge_event
from state.db import Database, Tx, chunks, marks
from state.layout import VarLayout
from state.ledger import Ledger
from state.ledger.retention import RETENTION_ACTOR, SpoolItem

__all__ = [
    "PAGE",
    "PAUSE_S",
    "Purger",
    "RetentionPreview",
    "context_due",
    "context_opener",
    "policy_of",
    "purge_context",
]

logger = logging.getLogger(__name__)


def policy_of(storage: StorageConfig) -> RetentionPolicy:
    """The retention policy of ``storage.retention``."""
    r = storage.retention
    return RetentionPolicy.of(r.spool_after_delivery_days, r.quarantine_days, r.rejected_days, r.hl7_raw_days)


PAGE = 500
"""Items per step of a purge round: files deleted and marked in one ledger transaction, rows of
the context store changed in one of its transactions."""
PAUSE_S = 0.05
"""Pause between two steps of a round: the round runs in a listener's process, whose DICOM
associations then get its GIL (and the context store's HL7 committer its write lock)."""

_CONTEXT_STEPS = (
    # store counted, table, what is due besides "audited, received at or before the cutoff", the change
    # and its arguments before the page's seqs
    (
        "hl7_raw",
        "hl7_inbox",
        " AND length(raw) > 0",
        "UPDATE hl7_inbox SET raw = ?, error = '' WHERE seq IN ({})",
        (b"",),
    ),
    ("hl7_raw", "hl7_conflicts", "", "DELETE FROM hl7_conflicts WHERE seq IN ({})", ()),
    ("rejected", "hl7_rejected", "", "DELETE FROM hl7_rejected WHERE seq IN ({})", ()),
)


def _always() -> bool:
    return True


def purge_context(
    db: Database,
    raw_before: float | None,
    rejected_before: float | None,
    page: int = PAGE,
    between: Callable[[], bool] = _always,
) -> dict[str, int]:
    """Retention (``core.retention``): drop the raw bytes (and error texts) of audited messages
    received at or before ``raw_before``, with their conflict copies, and the audited rejected
    heads received at or before ``rejected_before`` (``None``: keep). An inbox row itself stays:
    its control ID and content digest still recognise a re-send. Returns rows changed per store.

    ``page`` rows per transaction, in ``seq`` order (index ``(audited, seq)``, each page after
    the last): the HL7 committer waits for the store's write lock one page at most, however
    long a backlog a first round finds. ``between`` is called before each page; ``False`` stops.
    """
    out = {"hl7_raw": 0, "rejected": 0}
    cutoffs = {"hl7_raw": raw_before, "rejected": rejected_before}
    for store, table, due_too, change, args in _CONTEXT_STEPS:
        cutoff, after = cutoffs[store], 0
        while cutoff is not None:
            if not between():
                return out
            seqs = db.run(partial(_context_page, table, due_too, (change, args), cutoff, after, page))
            out[store] += len(seqs)
            if len(seqs) < page:
                break
            after = seqs[-1]
    return out


def _context_page(
    table: str, due_too: str, change: tuple[str, tuple[bytes, ...]], cutoff: float, after: int, page: int, tx: Tx
) -> list[int]:
    rows = tx.all(
        f"SELECT seq FROM {table} WHERE audited = 1 AND seq > ? AND received_at <= ?{due_too} ORDER BY seq LIMIT ?",
        (after, cutoff, page),
    )
    seqs = [int(r["seq"]) for r in rows]
    if seqs:
        sql, args = change
        tx.execute(sql.format(marks(len(seqs))), (*args, *seqs))
    return seqs


def context_due(db: Database, raw_before: float | None, rejected_before: float | None) -> dict[str, int]:
    """What ``purge_context`` with these cutoffs would change, per store, changing nothing."""
    out = {"hl7_raw": 0, "rejected": 0}
    with db.read() as tx:
        if raw_before is not None:
            for sql in (
                "SELECT COUNT(*) AS n FROM hl7_inbox WHERE audited = 1 AND received_at <= ? AND length(raw) > 0",
                "SELECT COUNT(*) AS n FROM hl7_conflicts WHERE audited = 1 AND received_at <= ?",
            ):
                out["hl7_raw"] += int(tx.one(sql, (raw_before,))["n"])
        if rejected_before is not None:
            row = tx.one(
                "SELECT COUNT(*) AS n FROM hl7_rejected WHERE audited = 1 AND received_at <= ?", (rejected_before,)
            )
            out["rejected"] = int(row["n"])
    return out


@dataclass(frozen=True, slots=True)
class RetentionPreview:
    """What a purge round would delete now (``pacsai purge --dry-run``); nothing names a patient.

    Attributes:
        counts: Items per store (``spool``, ``quarantine``, ``rejected``: files and HL7 heads,
            ``hl7_raw``: raw HL7 messages and conflict copies), as the round's audit event counts them.
        file_bytes: Bytes of the files among them (on disk, sealed).
        purging: The stores that purge at all (``storage.retention``).
    """

    counts: dict[str, int]
    file_bytes: int
    purging: tuple[str, ...]


def context_opener(storage: StorageConfig) -> Callable[[], Database | None]:
    """Opens the context store for the purge, or ``None`` where there is none (no SQLite file:
    the HL7 bridge never ran here; opening would create one)."""

    def open_() -> Database | None:
        from state.context_store import open_context

        if storage.ledger.backend == "sqlite" and not VarLayout.at(storage.var_dir).context.exists():
            return None
        return open_context(storage)

    return open_


class _Pace:
    """The steps of one round: ``next`` before each, pausing before all but the first, and
    ``False`` (for good) once ``stopping`` says so."""

    def __init__(self, pause_s: float, stopping: Callable[[], bool]) -> None:
        self._pause_s, self._stopping = pause_s, stopping
        self._steps = 0
        self.stopped = False

    def next(self) -> bool:
        """Whether to take another step (after the pause, when it is not the first)."""
        if not self.stopped and self._steps and self._pause_s > 0:
            time.sleep(self._pause_s)
        self._steps += 1
        self.stopped = self.stopped or self._stopping()
        return not self.stopped


class Purger:
    """One cell's purge rounds; the cell's first listener runs ``round`` in a loop.

    A round goes in steps of at most ``page`` items (files deleted and then recorded in one
    ledger transaction with an audit event of their counts; context rows changed in one
    transaction), ``pause_s`` apart, until nothing due is left or ``stopping`` says so: a site
    that receives more than a page an hour, or turns retention on over a long-kept spool, is
    purged within the round rather than a page a period (the cap was 1,000 files per store per
    round, 24,000 a day at the default period), and no step holds the listener's GIL or a
    store's write lock for long.
    """

    def __init__(
        self,
        storage: StorageConfig,
        ledger: Ledger,
        open_context: Callable[[], Database | None] | None = None,
        page: int = PAGE,
        pause_s: float = PAUSE_S,
    ) -> None:
        """Args:
        storage: Where the stores are, and ``retention``.
        ledger: This process's ledger.
        open_context: Opens the context store on first use (``None``: no HL7 bridge here).
        page: Most items of one step (files per ledger transaction, rows per context one).
        pause_s: Pause between two steps.
        """
        self._policy = policy_of(storage)
        self._layout = VarLayout.at(storage.var_dir)
        self._ledger = ledger
        self._open_context = open_context
        self._context: Database | None = None
        self._page = page
        self._pause_s = pause_s

    @property
    def active(self) -> bool:
        """Whether any store purges at all (else the loop need not run)."""
        return bool(self._policy.active)

    def round(self, now: float, stopping: Callable[[], bool] = lambda: False) -> int:
        """Purge what is due, step by step; return how many items went.

        Rejected files and context rows go first; their counts are audited with the first
        step of spool files (or alone, if there is none), so a small round is one audit event.
        ``stopping`` is asked before each step: what is left waits for the next round.
        """
        pace = _Pace(self._pause_s, stopping)
        pending: Counter[str] = Counter()
        failed = 0
        for part in chunks(self._rejected_due(now), self._page):
            if not pace.next():
                break
            gone, missed = self._delete(part)
            pending += counts(gone)
            failed += missed
        if not pace.stopped:
            pending += Counter(self._context_rows(now, between=pace.next))
        total = 0
        for step in () if pace.stopped else self._spool_steps(now):
            if not pace.next():
                break
            gone, missed = self._delete([(c, Path(item.path)) for c, item in step])
            by_key = {c.key: item for c, item in step}
            self._record([by_key[c.key].sop_instance_uid for c in gone], pending + counts(gone), failed + missed, now)
            total += sum(pending.values()) + len(gone)
            pending, failed = Counter(), 0
        if pending or failed:
            self._record([], pending, failed, now)
            total += sum(pending.values())
        return total

    def _record(self, uids: list[str], done: Counter[str], failed: int, now: float) -> None:
        """Mark purged instances, with one audit event of a step's counts, in one transaction."""
        event = purge_event(done, RETENTION_ACTOR, failed)
        if event is not None or uids:
            self._ledger.retention.mark_purged(uids, [event] if event else [], now)
            logger.info("retention purged %s (failed %d)", dict(done), failed)

    def preview(self, now: float) -> RetentionPreview:
        """What ``round(now)`` would delete, found the same way, with nothing deleted or recorded."""
        files = [(c, Path(item.path)) for step in self._spool_steps(now) for c, item in step]
        files += self._rejected_due(now)
        done = counts(c for c, _ in files) + Counter(self._context_rows(now, dry_run=True))
        size = 0
        for _, path in files:
            try:
                size += path.stat().st_size
            except OSError:  # gone already: the round would only record it
                pass
        purging = tuple(sorted(str(s) for s in self._policy.active))
        return RetentionPreview({k: n for k, n in sorted(done.items()) if n}, size, purging)

    def _spool_steps(self, now: float) -> Iterator[list[tuple[Candidate, SpoolItem]]]:
        """Spool files of delivered studies, then of quarantined instances, that are due: at
        most ``page`` a step, read a page at a time (oldest first, each page after the last, so
        a file that could not be deleted does not come back within the round)."""
        cutoff = self._policy.cutoff(Store.SPOOL, now)
        if cutoff is not None:
            after = None
            while True:
                items, after = self._ledger.retention.delivered(cutoff, after)
                if after is None:
                    break
                for part in chunks(items, self._page):
                    yield self._due(Store.SPOOL, part, now)
        cutoff = self._policy.cutoff(Store.QUARANTINE, now)
        if cutoff is not None:
            held_after = None
            while True:
                items, held_after = self._ledger.retention.quarantined(cutoff, held_after, self._page)
                if held_after is None:
                    break
                yield self._due(Store.QUARANTINE, items, now)

    def _due(self, store: Store, items: Sequence[SpoolItem], now: float) -> list[tuple[Candidate, SpoolItem]]:
        by_key = {f"{store}:{i.sop_instance_uid}": i for i in items}
        candidates = [Candidate(store, key, i.since) for key, i in by_key.items()]
        return [(c, by_key[c.key]) for c in due(candidates, self._policy, now)]

    def _delete(self, items: Sequence[tuple[Candidate, Path]]) -> tuple[list[Candidate], int]:
        gone, failed = [], 0
        for candidate, path in items:
            try:
                path.unlink(missing_ok=True)
                gone.append(candidate)
            except OSError as exc:
                failed += 1
                logger.warning("retention could not delete a %s file: %s", candidate.store, type(exc).__name__)
        return gone, failed

    def _rejected_due(self, now: float) -> list[tuple[Candidate, Path]]:
        """Files under ``rejected/`` past ``rejected_days`` by their modification time."""
        if self._policy.cutoff(Store.REJECTED, now) is None or not self._layout.rejected.is_dir():
            return []
        found = []
        for entry in os.scandir(self._layout.rejected):
            if entry.is_file(follow_symlinks=False):
                found.append((Candidate(Store.REJECTED, entry.name, entry.stat().st_mtime), Path(entry.path)))
        keep = {id(c) for c in due([c for c, _ in found], self._policy, now)}
        return [(c, p) for c, p in found if id(c) in keep]

    def _context_rows(self, now: float, dry_run: bool = False, between: Callable[[], bool] = _always) -> dict[str, int]:
        raw = self._policy.cutoff(Store.HL7_RAW, now)
        rejected = self._policy.cutoff(Store.REJECTED, now)
        if (raw is None and rejected is None) or self._open_context is None:
            return {}
        if self._context is None:
            self._context = self._open_context()
        if self._context is None:
            return {}
        if dry_run:
            return context_due(self._context, raw, rejected)
        return purge_context(self._context, raw, rejected, self._page, between)

    def close(self) -> None:
        """Close the context store handle, if one was opened."""
        if self._context is not None:
            self._context.close()
