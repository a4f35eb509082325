"""AI results for readers (issue 12): alert items, the worklist, reviews, views, policy versions.

- ``alert_items``: one row per finding and image-quality flag of each SR version, written by
  ``apply_alert_items`` in the transaction that records the version (``results.apply_versions``).
- The worklist (``worklist``) is one query: the latest SR version of each study and family that
  is (or will be) a result, with the alert items a caller's roles may see. The policy is
  compiled into the query's WHERE clause (``policy_sql``, a mirror of
  ``core.alert_policy.RolePolicy.shows``), so filtering costs one predicate per item row rather
  than a second pass, and the page is ordered by what the caller sees (critical first). The
  compiled clause only narrows the rows fetched: every entry's alerts are then passed through
  ``AlertPolicy.filter`` itself, and an entry left with none is dropped (the page is filled up
  from the next rows), so what a caller receives never depends on the compiler being right.
- A review (``record_review``) is one transaction: the submission, the reader's decisions
  (replacing their earlier ones on that SR version), an earlier pending submission of theirs
  marked superseded, and one ``FINDING_REVIEWED`` audit event per finding. Comments and the
  final diagnosis are sealed (``state.column_seal``).
- ``record_policy``: an alert policy taken is recorded with its audit event by the first replica
  that sees the change; a refused one once per digest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from core.alert_policy import AlertItem, AlertPolicy, OrderPriority
from core.audit import AuditEvent
from core.clinical import (
    ORDER_RANK,
    QUALITY_FAMILY,
    ReviewRequest,
    StoredReview,
    WorklistEntry,
    WorklistPage,
    alert_items_of,
    worklist_entry,
)
from core.results import SrVersion
from core.types import AuditEventType
from core.versions import VersionState
from state.column_seal import ColumnSealer, sealer_of
from state.db import Database, Row, Tx, marks
from state.ledger._policy_sql import policy_sql
from state.ledger.audit import append_events
from state.ledger.clinical_verified import VerifiedSubmissions

__all__ = ["Clinical", "ReviewReceipt", "apply_alert_items", "policy_sql"]

_NOT_RESULTS = (VersionState.SUPERSEDED.value, VersionState.ABANDONED.value)
ITEM_COLUMNS = (  # the alert item's columns, table alias ``a`` (``alert_item``)
    "a.item_id, a.sr_uid, a.study_uid, a.family, a.finding, a.probability, a.present, a.critical,"
    " a.quality_flag, a.order_priority, a.created_at"
)
_RANK = " ".join(f"WHEN '{k}' THEN {v}" for k, v in ORDER_RANK.items() if k is not None)
_LATEST = (
    "r.state NOT IN (?,?) AND NOT EXISTS (SELECT 1 FROM sr_results n WHERE n.study_uid = r.study_uid"
    " AND n.family = r.family AND n.job_version > r.job_version AND n.state NOT IN (?,?))"
)
_WORKLIST = (
    "SELECT r.sop_instance_uid AS sr_uid, r.study_uid, r.family, r.model_version, r.created_at,"
    " MAX(CASE WHEN a.critical = 1 AND a.quality_flag = 0 THEN 1 ELSE 0 END) AS crit,"
    f" MIN(CASE a.order_priority {_RANK} ELSE {ORDER_RANK[None]} END) AS rank,"
    " COUNT(*) OVER () AS total"
    " FROM sr_results r JOIN alert_items a ON a.sr_uid = r.sop_instance_uid"
    f" WHERE {_LATEST} AND {{where}}"
    " GROUP BY r.sop_instance_uid, r.study_uid, r.family, r.model_version, r.created_at"
    " ORDER BY crit DESC, rank, r.created_at DESC, r.sop_instance_uid LIMIT ? OFFSET ?"
)


def apply_alert_items(tx: Tx, versions: Iterable[SrVersion], order_priority: OrderPriority | None, now: float) -> None:
    """Record the alert items of SR versions (once each: a rebuilt version keeps its rows)."""
    rows = [
        (
            v.sop_instance_uid,
            v.study_uid,
            v.family,
            i.key,
            i.probability,
            int(i.present),
            int(i.critical),
            int(i.quality_flag),
            i.order_priority,
            now,
        )
        for v in versions
        for i in alert_items_of(v.prediction, order_priority)
    ]
    if rows:
        tx.executemany(
            "INSERT INTO alert_items (sr_uid, study_uid, family, finding, probability, present, critical,"
            " quality_flag, order_priority, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (sr_uid, finding, quality_flag) DO NOTHING",
            rows,
        )


def alert_item(row: Row) -> AlertItem:
    """An ``alert_items`` row (``ITEM_COLUMNS``) as the policy judges it (the pushes read it too)."""
    return AlertItem(
        QUALITY_FAMILY if int(row["quality_flag"]) else row["family"],
        row["finding"],
        float(row["probability"]),
        bool(int(row["present"])),
        bool(int(row["critical"])),
        bool(int(row["quality_flag"])),
        row["order_priority"] or None,
    )


@dataclass(frozen=True, slots=True)
class ReviewReceipt:
    """A recorded review submission.

    Attributes:
        submission_id: Its row (the verified SR's delivery follows it).
        version: The reader's n-th submission on this SR version.
    """

    submission_id: int
    version: int


class Clinical(VerifiedSubmissions):
    """Alert items, the worklist, reviews, result views and alert-policy versions; the verified
    SRs' delivery state (``VerifiedSubmissions``)."""

    def __init__(self, db: Database, sealer: ColumnSealer | None = None) -> None:
        """Args:
        db: The ledger database.
        sealer: Seals comments and final diagnoses (default: the database's).
        """
        super().__init__(db, sealer or sealer_of(db))

    # Alert items ------------------------------------------------------------------------------

    def items_of(self, sr_uid: str) -> list[AlertItem]:
        """Every alert item of one SR version (present or not), in the model's order."""
        with self._db.read() as tx:
            rows = tx.all(f"SELECT {ITEM_COLUMNS} FROM alert_items a WHERE a.sr_uid = ? ORDER BY a.item_id", (sr_uid,))
        return [alert_item(r) for r in rows]

    # Worklist ---------------------------------------------------------------------------------

    def worklist(
        self,
        policy: AlertPolicy | None,
        roles: Iterable[str],
        reader: str,
        limit: int = 50,
        offset: int = 0,
    ) -> WorklistPage:
        """A page of a reader's worklist: the latest result of each study and family with an alert
        the reader's roles may see, critical first, then by order priority, newest first.

        Args:
            policy: The alert policy; ``None``: every alert (operators).
            roles: The reader's roles.
            reader: The reader's user name (marks what they reviewed).
            limit: Entries per page.
            offset: Entries to skip.
        """
        held = list(roles)
        where, where_args = policy_sql(policy, held)
        sql = _WORKLIST.format(where=where)
        entries: list[WorklistEntry] = []
        total, skip, dropped = 0, offset, 0
        with self._db.read() as tx:
            while len(entries) < limit:
                want = limit - len(entries)
                rows = tx.all(sql, (*_NOT_RESULTS, *_NOT_RESULTS, *where_args, want, skip))
                if not rows:
                    break
                total = int(rows[0]["total"])
                skip += len(rows)
                items = self._items_by_sr(tx, [r["sr_uid"] for r in rows])
                reviewed = self._reviewed(tx, reader, [r["sr_uid"] for r in rows])
                for r in rows:
                    shown = items.get(r["sr_uid"], [])
                    if policy is not None:
                        shown = policy.filter(held, shown)
                    else:
                        shown = [i for i in shown if i.present]
                    entry = worklist_entry(
                        r["sr_uid"],
                        r["study_uid"],
                        r["family"],
                        r["model_version"],
                        float(r["created_at"]),
                        shown,
                        r["sr_uid"] in reviewed,
                    )
                    if entry is None:
                        dropped += 1
                    else:
                        entries.append(entry)
                if len(rows) < want:
                    break
            if not total and offset:
                count = tx.one(
                    "SELECT COUNT(*) AS n FROM (SELECT r.sop_instance_uid FROM sr_results r JOIN alert_items a"
                    f" ON a.sr_uid = r.sop_instance_uid WHERE {_LATEST} AND {where}"
                    " GROUP BY r.sop_instance_uid) t",
                    (*_NOT_RESULTS, *_NOT_RESULTS, *where_args),
                )
                total = int(count["n"]) if count else 0
        return WorklistPage(tuple(entries), max(total - dropped, len(entries)))

    @staticmethod
    def _items_by_sr(tx: Tx, sr_uids: Sequence[str]) -> dict[str, list[AlertItem]]:
        found: dict[str, list[AlertItem]] = {}
        if sr_uids:
            rows = tx.all(
                f"SELECT {ITEM_COLUMNS} FROM alert_items a WHERE a.sr_uid IN ({marks(len(sr_uids))})"
                " ORDER BY a.item_id",
                list(sr_uids),
            )
            for r in rows:
                found.setdefault(r["sr_uid"], []).append(alert_item(r))
        return found

    @staticmethod
    def _reviewed(tx: Tx, reader: str, sr_uids: Sequence[str]) -> set[str]:
        if not sr_uids or not reader:
            return set()
        rows = tx.all(
            f"SELECT DISTINCT sr_uid FROM finding_reviews WHERE reader = ? AND sr_uid IN ({marks(len(sr_uids))})",
            (reader, *sr_uids),
        )
        return {r["sr_uid"] for r in rows}

    # Reviews and views ------------------------------------------------------------------------

    def reviews_of(self, study_uid: str, family: str | None = None) -> list[StoredReview]:
        """Every reader's standing decisions on the study's SR versions (of one family), oldest first."""
        sql = (
            "SELECT f.sr_uid, r.job_version, f.reader, f.submission_id, s.version, f.finding, f.assessment,"
            " f.final_present, f.comment, f.reviewed_at FROM finding_reviews f"
            " JOIN sr_results r ON r.sop_instance_uid = f.sr_uid"
            " JOIN review_submissions s ON s.submission_id = f.submission_id WHERE f.study_uid = ?"
        )
        args: list[object] = [study_uid]
        if family is not None:
            sql, args = sql + " AND f.family = ?", [*args, family]
        with self._db.read() as tx:
            rows = tx.all(sql + " ORDER BY r.job_version, f.reviewed_at, f.reader, f.finding", args)
        return [
            StoredReview(
                r["sr_uid"],
                int(r["job_version"]),
                r["reader"],
                int(r["submission_id"]),
                int(r["version"]),
                r["finding"],
                r["assessment"],
                bool(int(r["final_present"])),
                self._seal.open_text(r["comment"]),
                float(r["reviewed_at"]),
            )
            for r in rows
        ]

    def record_view(
        self, sr_uid: str, study_uid: str, reader: str, heatmap_viewed: bool, event: AuditEvent, now: float
    ) -> None:
        """Record that a reader opened a result (or its heatmap), with its audit event."""

        def apply(tx: Tx) -> None:
            tx.execute(
                "INSERT INTO result_views (sr_uid, reader, study_uid, first_at, last_at, heatmap_viewed)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT (sr_uid, reader) DO UPDATE SET last_at = excluded.last_at,"
                " heatmap_viewed = CASE WHEN excluded.heatmap_viewed = 1 THEN 1"
                " ELSE result_views.heatmap_viewed END",
                (sr_uid, reader, study_uid, now, now, int(heatmap_viewed)),
            )
            append_events(tx, [event], now)

        self._db.run(apply)

    def heatmap_viewed(self, sr_uid: str, reader: str) -> bool:
        """Whether the reader opened the heatmap of this SR version."""
        with self._db.read() as tx:
            row = tx.one("SELECT heatmap_viewed FROM result_views WHERE sr_uid = ? AND reader = ?", (sr_uid, reader))
        return bool(row and int(row["heatmap_viewed"]))

    def record_review(
        self,
        version: SrVersion,
        reader: str,
        request: ReviewRequest,
        ai: Mapping[str, AlertItem],
        actor: str,
        now: float,
    ) -> ReviewReceipt:
        """Record a reader's submission on one SR version, in one transaction.

        The reader's decisions on this version are replaced by the new ones; an earlier
        submission of theirs not yet delivered as a verified SR is superseded; one
        ``FINDING_REVIEWED`` audit event per finding names the AI result (study and SR UID, job
        version, family, the AI's probability and presence) and the reader's decision.

        Args:
            version: The AI SR version reviewed.
            reader: The reader's user name.
            request: The checked request (``core.clinical.check_review``).
            ai: The SR's alert items by finding key.
            actor: The audit actor (the principal's subject).
            now: Epoch seconds.
        """
        label = f"{version.family}@{version.model_version}"

        def apply(tx: Tx) -> ReviewReceipt:
            tx.lock_chain()  # PostgreSQL: two submissions of one reader never take the same version
            last = tx.one(
                "SELECT MAX(version) AS n FROM review_submissions WHERE sr_uid = ? AND reader = ?",
                (version.sop_instance_uid, reader),
            )
            n = (int(last["n"]) if last and last["n"] is not None else 0) + 1
            tx.execute(
                "UPDATE review_submissions SET state = 'superseded' WHERE sr_uid = ? AND reader = ? AND state = 'pending'",
                (version.sop_instance_uid, reader),
            )
            [row] = tx.all(
                "INSERT INTO review_submissions (sr_uid, study_uid, family, model_version, reader, reader_name,"
                " version, final_diagnosis, heatmap_viewed, submitted_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
                " RETURNING submission_id",
                (
                    version.sop_instance_uid,
                    version.study_uid,
                    version.family,
                    label,
                    reader,
                    request.reader_name,
                    n,
                    self._seal.text(request.final_diagnosis),
                    int(request.heatmap_viewed),
                    now,
                ),
            )
            submission_id = int(row["submission_id"])
            tx.execute(
                "DELETE FROM finding_reviews WHERE sr_uid = ? AND reader = ?", (version.sop_instance_uid, reader)
            )
            tx.executemany(
                "INSERT INTO finding_reviews (sr_uid, finding, reader, submission_id, study_uid, family,"
                " model_version, assessment, final_present, comment, reviewed_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        version.sop_instance_uid,
                        d.finding,
                        reader,
                        submission_id,
                        version.study_uid,
                        version.family,
                        label,
                        d.assessment,
                        int(d.final_present),
                        self._seal.text(d.comment),
                        now,
                    )
                    for d in request.findings
                ],
            )
            events = [
                AuditEvent(
                    AuditEventType.FINDING_REVIEWED,
                    actor,
                    version.study_uid,
                    version.sop_instance_uid,
                    version.job_id,
                    {
                        "family": version.family,
                        "model_version": label,
                        "version": version.job_version,
                        "finding": d.finding,
                        "ai_probability": ai[d.finding].probability if d.finding in ai else None,
                        "ai_present": ai[d.finding].present if d.finding in ai else None,
                        "assessment": d.assessment,
                        "final_present": d.final_present,
                        "heatmap_viewed": request.heatmap_viewed,
                        "submission_id": submission_id,
                        "review_version": n,
                        "reader": reader,
                    },
                )
                for d in request.findings
            ]
            append_events(tx, events, now)
            return ReviewReceipt(submission_id, n)

        return self._db.run(apply)

    # Alert policy versions --------------------------------------------------------------------

    def record_policy(self, digest: str, changes: Sequence[str], event: AuditEvent, now: float) -> bool:
        """Record that a policy was taken, with its audit event, unless it is the newest taken
        already (another replica recorded this change).

        Returns:
            Whether this call recorded it.
        """

        def apply(tx: Tx) -> bool:
            tx.lock_chain()  # PostgreSQL: two replicas seeing one change record it once
            newest = tx.one("SELECT digest FROM alert_policy_versions WHERE state = 'taken' ORDER BY seq DESC LIMIT 1")
            if newest is not None and newest["digest"] == digest:
                return False
            tx.execute(
                "INSERT INTO alert_policy_versions (digest, state, loaded_at, changes) VALUES (?, 'taken', ?, ?)",
                (digest, now, json.dumps(list(changes))),
            )
            append_events(tx, [event], now)
            return True

        return self._db.run(apply)

    def record_policy_rejected(self, digest: str, problems: Sequence[str], event: AuditEvent, now: float) -> bool:
        """Record a refused policy file with its audit event, once per digest.

        Returns:
            Whether this call recorded it.
        """

        def apply(tx: Tx) -> bool:
            tx.lock_chain()
            seen = tx.one(
                "SELECT seq FROM alert_policy_versions WHERE digest = ? AND state = 'rejected' LIMIT 1", (digest,)
            )
            if seen is not None:
                return False
            tx.execute(
                "INSERT INTO alert_policy_versions (digest, state, loaded_at, changes) VALUES (?, 'rejected', ?, ?)",
                (digest, now, json.dumps(list(problems))),
            )
            append_events(tx, [event], now)
            return True

        return self._db.run(apply)

    def policy_versions(self) -> list[tuple[str, str, float, list[str]]]:
        """Every policy taken or refused, oldest first: ``(digest, state, loaded_at, changes)``."""
        with self._db.read() as tx:
            rows = tx.all("SELECT digest, state, loaded_at, changes FROM alert_policy_versions ORDER BY seq")
        return [(r["digest"], r["state"], float(r["loaded_at"]), json.loads(r["changes"])) for r in rows]
