"""Review flags: raised with a job's transition, listed, and resolved by a reviewer (audited)."""

from __future__ import annotations

import json

from core.audit import AuditEvent
from core.errors import RejectedInput
from core.ledger import RaiseReviewFlag
from core.review import FlagKind, FlagState, Resolution, Reviewer, ReviewFlag, resolve
from core.types import AuditEventType, JobState
from state.db import Database, Row, Tx
from state.ledger.audit import append_events

__all__ = ["Reviews", "apply_flag"]

_COLUMNS = (
    "flag_id, at, kind, study_uid, other_study_uid, subject, job_id, detail, resolved, resolution,"
    " resolved_by, resolved_at, reason"
)


def apply_flag(tx: Tx, job_id: int | None, effect: RaiseReviewFlag, now: float) -> None:
    """Raise a review flag (once per kind, study pair and subject)."""
    tx.execute(
        "INSERT INTO review_flags (at, kind, study_uid, other_study_uid, subject, job_id, detail)"
        " VALUES (?,?,?,?,?,?,?) ON CONFLICT (kind, study_uid, other_study_uid, subject) DO NOTHING",
        (
            now,
            effect.kind.value,
            effect.study_uid,
            effect.other_study_uid,
            effect.subject,
            job_id,
            json.dumps(dict(effect.detail), sort_keys=True, default=str),
        ),
    )


def _flag(row: Row) -> ReviewFlag:
    resolution = row["resolution"] or None
    return ReviewFlag(
        int(row["flag_id"]),
        FlagKind(row["kind"]),
        row["study_uid"],
        row["other_study_uid"],
        json.loads(row["detail"] or "{}"),
        float(row["at"]),
        FlagState.RESOLVED if int(row["resolved"]) else FlagState.OPEN,
        Resolution(resolution) if resolution else None,
        row["resolved_by"],
        None if row["resolved_at"] is None else float(row["resolved_at"]),
        row["reason"],
        None if row["job_id"] is None else int(row["job_id"]),
        row["subject"],
    )


class Reviews:
    """What the bridge could not decide alone, for people to settle (``core.review``)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._written = db.channel(f"jobs_{JobState.WRITTEN.value}")

    def flags(
        self,
        state: FlagState | None = FlagState.OPEN,
        study_uid: str | None = None,
        kind: FlagKind | None = None,
        limit: int = 1000,
    ) -> list[ReviewFlag]:
        """Flags, oldest first, optionally of one state, study and kind."""
        where, args = ["1 = 1"], []
        if state is not None:
            where.append("resolved = ?")
            args.append(int(state is FlagState.RESOLVED))
        if study_uid is not None:
            where.append("study_uid = ?")
            args.append(study_uid)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind.value)
        with self._db.read() as tx:
            rows = tx.all(
                f"SELECT {_COLUMNS} FROM review_flags WHERE {' AND '.join(where)} ORDER BY flag_id LIMIT ?",
                [*args, limit],
            )
        return [_flag(r) for r in rows]

    def raise_flag(self, job_id: int | None, flag: RaiseReviewFlag, event: AuditEvent, now: float) -> None:
        """Raise a flag outside a job transition, with its audit event (e.g. a held SR version)."""

        def apply(tx: Tx) -> None:
            apply_flag(tx, job_id, flag, now)
            append_events(tx, [event], now)

        self._db.run(apply)

    def get(self, flag_id: int) -> ReviewFlag:
        """One flag.

        Raises:
            RejectedInput: No flag has this id.
        """
        with self._db.read() as tx:
            row = tx.one(f"SELECT {_COLUMNS} FROM review_flags WHERE flag_id = ?", (flag_id,))
        if row is None:
            raise RejectedInput(f"Got review flag {flag_id}; expected the id of a raised flag", str(flag_id))
        return _flag(row)

    def resolve(self, flag_id: int, reviewer: Reviewer, resolution: Resolution, reason: str, now: float) -> ReviewFlag:
        """Resolve a flag: who, how and why, stored with its audit event in one transaction.

        A released SR version cap makes the study's written jobs due again, so delivery sends
        the held version.

        Raises:
            RejectedInput: No such flag, resolved already, or the resolution or reason is wrong.
            AccessDenied: The reviewer's roles may not choose this resolution.
        """

        def settle(tx: Tx) -> ReviewFlag:
            row = tx.one(f"SELECT {_COLUMNS} FROM review_flags WHERE flag_id = ?" + tx.for_update, (flag_id,))
            if row is None:
                raise RejectedInput(f"Got review flag {flag_id}; expected the id of a raised flag", str(flag_id))
            done = resolve(_flag(row), reviewer, resolution, reason, now)
            tx.execute(
                "UPDATE review_flags SET resolved = 1, resolution = ?, resolved_by = ?,"
                " resolved_at = ?, reason = ? WHERE flag_id = ?",
                (str(done.resolution), done.resolved_by, now, done.reason, flag_id),
            )
            if done.kind is FlagKind.SR_VERSION_CAP and done.resolution is Resolution.RELEASED:
                tx.execute(
                    "UPDATE jobs SET not_before = ? WHERE study_uid = ? AND state = ?",
                    (now, done.study_uid, JobState.WRITTEN.value),
                )
                tx.notify(self._written, "")
            append_events(
                tx,
                [
                    AuditEvent(
                        AuditEventType.REVIEW_FLAG_RESOLVED,
                        done.resolved_by,
                        done.study_uid,
                        job_id=done.job_id,
                        detail=done.audit_detail(),
                    )
                ],
                now,
            )
            return done

        return self._db.run(settle)

    def open_by_kind(self) -> dict[str, int]:
        """Open flags per kind (``pacsai status``)."""
        with self._db.read() as tx:
            rows = tx.all("SELECT kind, COUNT(*) AS n FROM review_flags WHERE resolved = 0 GROUP BY kind ORDER BY kind")
        return {r["kind"]: int(r["n"]) for r in rows}
