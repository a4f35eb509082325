"""Review submissions on their way back to the PACS as verified SRs (issue 12).

``VerifiedSubmissions`` owns the delivery columns of ``review_submissions`` (``verified_uid``,
``verified_path``, ``state``, ``attempts``, ``last_error``, ``delivered_at``); the clinical
repository (``state.ledger.clinical``) records the submissions and inherits these methods, so
callers use ``ledger.clinical.pending_verified(...)`` and friends. The final diagnosis and the
comments are sealed columns (``state.column_seal``): opened here, never logged.
"""

from __future__ import annotations

from core.audit import AuditEvent
from core.results import OutputKind
from core.review_submissions import (
    ReviewDecision,
    ReviewSubmission,
    SubmissionState,
    newest_per_reader,
    verified_series_uid,
)
from state.column_seal import ColumnSealer, sealer_of
from state.db import Database, Row, Tx
from state.ledger._rows import equal_to
from state.ledger.audit import append_events
from state.ledger.outbox import PublishedResult

__all__ = ["VerifiedSubmissions"]

_PENDING = SubmissionState.PENDING.value
_COLUMNS = (
    "submission_id, sr_uid, study_uid, family, model_version, reader, reader_name, version,"
    " final_diagnosis, submitted_at, state, attempts, verified_uid, verified_path, last_error"
)


class VerifiedSubmissions:
    """The verified-SR side of review submissions: what is pending, built, delivered, dead."""

    def __init__(self, db: Database, sealer: ColumnSealer | None = None) -> None:
        """Args:
        db: The ledger database.
        sealer: Opens the sealed columns (default: the one bound to ``db``).
        """
        self._db = db
        self._seal = sealer or sealer_of(db)

    def pending_verified(self, limit: int = 20) -> list[ReviewSubmission]:
        """Pending submissions, oldest first, each with the reader's decisions on its AI SR.

        A pending submission that the same reader's newer submission on the same AI SR follows is
        marked ``superseded`` first (in the same transaction): it is never sent after the newer.
        """

        with self._db.read() as tx:  # the common case, every round: nothing pending, no write
            if tx.one("SELECT 1 AS x FROM review_submissions WHERE state = ? LIMIT 1", (_PENDING,)) is None:
                return []

        def run(tx: Tx) -> list[ReviewSubmission]:
            tx.execute(
                "UPDATE review_submissions SET state = ? WHERE state = ? AND EXISTS (SELECT 1 FROM"
                " review_submissions n WHERE n.sr_uid = review_submissions.sr_uid"
                " AND n.reader = review_submissions.reader AND n.version > review_submissions.version)",
                (SubmissionState.SUPERSEDED.value, _PENDING),
            )
            rows = tx.all(
                f"SELECT {_COLUMNS} FROM review_submissions WHERE state = ? ORDER BY submission_id LIMIT ?",
                (_PENDING, limit),
            )
            return [self._submission(tx, r) for r in rows]

        return newest_per_reader(self._db.run(run))

    def verified_submission(self, submission_id: int) -> ReviewSubmission | None:
        """One submission in any state (``None``: no such row)."""
        with self._db.read() as tx:
            row = tx.one(f"SELECT {_COLUMNS} FROM review_submissions WHERE submission_id = ?", (submission_id,))
            return self._submission(tx, row) if row else None

    def _submission(self, tx: Tx, row: Row) -> ReviewSubmission:
        decisions = tx.all(
            "SELECT finding, assessment, final_present, comment FROM finding_reviews"
            " WHERE sr_uid = ? AND reader = ? AND submission_id <= ? ORDER BY finding",
            (row["sr_uid"], row["reader"], row["submission_id"]),
        )
        return ReviewSubmission(
            int(row["submission_id"]),
            row["sr_uid"],
            row["study_uid"],
            row["family"],
            row["model_version"],
            row["reader"],
            row["reader_name"],
            int(row["version"]),
            self._seal.open_text(row["final_diagnosis"]),
            float(row["submitted_at"]),
            tuple(
                ReviewDecision(
                    d["finding"], d["assessment"], bool(d["final_present"]), self._seal.open_text(d["comment"])
                )
                for d in decisions
            ),
            SubmissionState(row["state"]),
            int(row["attempts"]),
            row["verified_uid"],
            row["verified_path"],
            row["last_error"],
        )

    def published_verified(
        self,
        study_uid: str | None = None,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
        limit: int = 1000,
    ) -> list[PublishedResult]:
        """The verified SRs DICOMweb clients may find and read beside the outbox's results
        (``Outbox.published``): built and pending or delivered, newest first, narrowed by the
        UIDs given. One never sent (superseded by the same reader's newer review) or given up
        (``dead``) is not listed: the PACS does not hold it either. Its series is derived from
        the AI SR's (``verified_series_uid``), its SOP class is the AI SR's (a verified SR is a
        copy of it), its time the review's submission.
        """
        narrowed, given = equal_to((("r.study_uid", study_uid), ("r.verified_uid", sop_instance_uid)))
        where = ["r.verified_uid != ''", "r.verified_path != ''", "r.state IN (?, ?)", *narrowed]
        args = [_PENDING, SubmissionState.DELIVERED.value, *given]
        sql = (
            "SELECT r.study_uid, r.verified_uid, r.verified_path, r.submitted_at, o.series_uid, o.sop_class_uid"
            " FROM review_submissions r JOIN outbox o ON o.item_id ="
            " (SELECT MIN(x.item_id) FROM outbox x WHERE x.sop_instance_uid = r.sr_uid)"
            " WHERE " + " AND ".join(where) + " ORDER BY r.submitted_at DESC, r.submission_id DESC"
        )
        with self._db.read() as tx:
            rows = tx.all(sql, args)
        found = [
            PublishedResult(
                r["study_uid"],
                verified_series_uid(r["series_uid"]),
                r["verified_uid"],
                r["sop_class_uid"],
                OutputKind.SR,
                r["verified_path"],
                float(r["submitted_at"]),
            )
            for r in rows
        ]
        return [r for r in found if series_uid is None or r.series_uid == series_uid][:limit]

    def mark_verified_built(self, submission_id: int, sop_uid: str, path: str) -> None:
        """Record the verified SR's UID and its file in the outbox directory."""
        self._db.run(
            lambda tx: tx.execute(
                "UPDATE review_submissions SET verified_uid = ?, verified_path = ? WHERE submission_id = ?",
                (sop_uid, path, submission_id),
            )
        )

    def mark_verified_delivered(self, submission_id: int, now: float, event: AuditEvent) -> bool:
        """Record that the PACS accepted the verified SR, with its audit event (once: a
        submission no longer pending records nothing). Returns whether it was recorded."""

        def run(tx: Tx) -> bool:
            changed = tx.execute(
                "UPDATE review_submissions SET state = ?, delivered_at = ?, attempts = attempts + 1, last_error = ''"
                " WHERE submission_id = ? AND state = ?",
                (SubmissionState.DELIVERED.value, now, submission_id, _PENDING),
            )
            if not changed:
                return False
            append_events(tx, [event], now)
            return True

        return self._db.run(run)

    def note_verified_failure(self, submission_id: int, error: str, dead: bool) -> None:
        """Record a refusal (one attempt more); ``dead``: give the submission up."""
        state = SubmissionState.DEAD.value if dead else _PENDING
        self._db.run(
            lambda tx: tx.execute(
                "UPDATE review_submissions SET attempts = attempts + 1, last_error = ?, state = ?"
                " WHERE submission_id = ? AND state = ?",
                (error[:500], state, submission_id, _PENDING),
            )
        )
