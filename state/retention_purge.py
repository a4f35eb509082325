"""The purge loop's work (``core.retention`` decides, this deletes and records).

One round: spool files of delivered studies and of quarantined instances past their days
(the ledger says which: ``state.ledger.retention``), files under ``rejected/`` by age, and in
the context store the raw bytes of audited HL7 messages and the audited rejected heads. A file
is deleted first and recorded after (a crash between leaves a candidate whose file is gone:
the next round records it), and the round's counts go to the audit trail in the same
transaction as the ledger marks; nothing that names a patient is logged or audited.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.config import StorageConfig
from core.retention import Candidate, RetentionPolicy, Store, counts, due, purge_event
from state.db import Database, Tx
from state.layout import VarLayout
from state.ledger import Ledger
from state.ledger.retention import RETENTION_ACTOR, SpoolItem

__all__ = ["Purger", "RetentionPreview", "context_due", "context_opener", "policy_of", "purge_context"]

logger = logging.getLogger(__name__)


def policy_of(storage: StorageConfig) -> RetentionPolicy:
    """The retention policy of ``storage.retention``."""
    r = storage.retention
    return RetentionPolicy.of(r.spool_after_delivery_days, r.quarantine_days, r.rejected_days, r.hl7_raw_days)


def purge_context(db: Database, raw_before: float | None, rejected_before: float | None) -> dict[str, int]:
    """Retention (``core.retention``): drop the raw bytes (and error texts) of audited messages
    received at or before ``raw_before``, with their conflict copies, and the audited rejected
    heads received at or before ``rejected_before`` (``None``: keep). An inbox row itself stays:
    its control ID and content digest still recognise a re-send. Returns rows changed per store.
    """

    def work(tx: Tx) -> dict[str, int]:
        out = {"hl7_raw": 0, "rejected": 0}
        if raw_before is not None:
            out["hl7_raw"] = tx.execute(
                "UPDATE hl7_inbox SET raw = ?, error = '' WHERE audited = 1 AND received_at <= ? AND length(raw) > 0",
                (b"", raw_before),
            ) + tx.execute("DELETE FROM hl7_conflicts WHERE audited = 1 AND received_at <= ?", (raw_before,))
        if rejected_before is not None:
            out["rejected"] = tx.execute(
                "DELETE FROM hl7_rejected WHERE audited = 1 AND received_at <= ?", (rejected_before,)
            )
        return out

    return db.run(work)


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


class Purger:
    """One site's (one cell's) purge rounds; the auditor runs ``round`` in a loop."""

    def __init__(
        self, storage: StorageConfig, ledger: Ledger, open_context: Callable[[], Database | None] | None = None
    ) -> None:
        """Args:
        storage: Where the stores are, and ``retention``.
        ledger: This process's ledger.
        open_context: Opens the context store on first use (``None``: no HL7 bridge here).
        """
        self._policy = policy_of(storage)
        self._layout = VarLayout.at(storage.var_dir)
        self._ledger = ledger
        self._open_context = open_context
        self._context: Database | None = None

    @property
    def active(self) -> bool:
        """Whether any store purges at all (else the loop need not run)."""
        return bool(self._policy.active)

    def round(self, now: float) -> int:
        """Purge what is due; return how many items went."""
        spool = self._spool(now)
        gone, failed = self._delete([(c, Path(item.path)) for c, item in spool])
        by_key = {c.key: item for c, item in spool}
        uids = [by_key[c.key].sop_instance_uid for c in gone]
        gone += self._rejected_files(now)
        done = counts(gone) + Counter(self._context_rows(now))
        event = purge_event(done, RETENTION_ACTOR, failed)
        if event is not None or uids:
            self._ledger.retention.mark_purged(uids, [event] if event else [], now)
            logger.info("retention purged %s (failed %d)", dict(done), failed)
        return sum(done.values())

    def preview(self, now: float) -> RetentionPreview:
        """What ``round(now)`` would delete, found the same way, with nothing deleted or recorded."""
        files = [(c, Path(item.path)) for c, item in self._spool(now)] + self._rejected_due(now)
        done = counts(c for c, _ in files) + Counter(self._context_rows(now, dry_run=True))
        size = 0
        for _, path in files:
            try:
                size += path.stat().st_size
            except OSError:  # gone already: the round would only record it
                pass
        purging = tuple(sorted(str(s) for s in self._policy.active))
        return RetentionPreview({k: n for k, n in sorted(done.items()) if n}, size, purging)

    def _spool(self, now: float) -> list[tuple[Candidate, SpoolItem]]:
        """Spool files of delivered studies and quarantined instances that are due."""
        out: list[tuple[Candidate, SpoolItem]] = []
        queries = {Store.SPOOL: self._ledger.retention.delivered, Store.QUARANTINE: self._ledger.retention.quarantined}
        for store, query in queries.items():
            cutoff = self._policy.cutoff(store, now)
            if cutoff is None:
                continue
            items = {f"{store}:{i.sop_instance_uid}": i for i in query(cutoff)}
            candidates = [Candidate(store, key, i.since) for key, i in items.items()]
            out += [(c, items[c.key]) for c in due(candidates, self._policy, now)]
        return out

    def _delete(self, items: list[tuple[Candidate, Path]]) -> tuple[list[Candidate], int]:
        gone, failed = [], 0
        for candidate, path in items:
            try:
                path.unlink(missing_ok=True)
                gone.append(candidate)
            except OSError as exc:
                failed += 1
                logger.warning("retention could not delete a %s file: %s", candidate.store, type(exc).__name__)
        return gone, failed

    def _rejected_files(self, now: float) -> list[Candidate]:
        """Delete the files under ``rejected/`` past ``rejected_days``; return those that went."""
        return self._delete(self._rejected_due(now))[0]

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

    def _context_rows(self, now: float, dry_run: bool = False) -> dict[str, int]:
        raw = self._policy.cutoff(Store.HL7_RAW, now)
        rejected = self._policy.cutoff(Store.REJECTED, now)
        if (raw is None and rejected is None) or self._open_context is None:
            return {}
        if self._context is None:
            self._context = self._open_context()
        if self._context is None:
            return {}
        return (context_due if dry_run else purge_context)(self._context, raw, rejected)

    def close(self) -> None:
        """Close the context store handle, if one was opened."""
        if self._context is not None:
            self._context.close()
