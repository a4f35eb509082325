"""Jobs: leasing, transitions with their effects, retries, replay, and waiting for work."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.audit import AuditEvent
from core.clinical import order_priority_of
from core.errors import LeaseLost, RejectedInput
from core.job import Job, JobRecord
from core.ledger import (
    CoverStudy,
    Effect,
    HoldInQuarantine,
    MarkSrVersions,
    QueueOutbox,
    RaiseReviewFlag,
    RecordSrVersions,
    RetryPolicy,
    SetAside,
    WithdrawOutbox,
    can_transition,
)
from core.types import AuditEventType, JobState
from state.db import Database, Row, Tx, marks
from state.ledger._codec import RecordCodec
from state.ledger._rows import job_of
from state.ledger.audit import append_events
from state.ledger.intake import apply_cover_study, apply_set_aside, reopen_study
from state.ledger.outbox import apply_queue, apply_withdraw
from state.ledger.quarantine import apply_hold
from state.ledger.results import apply_mark, apply_versions
from state.ledger.reviews import apply_flag

__all__ = ["JobSummary", "Jobs"]

_JOB_COLUMNS = (
    "job_id, study_uid, version, state, priority, attempts, not_before, created_at, updated_at,"
    " last_instance_at, reason, lease_owner, leased_until, data"
)
_SUMMARY_COLUMNS = _JOB_COLUMNS.replace(", data", ", dead_from")


@dataclass(frozen=True, slots=True)
class JobSummary:
    """A job as operators list it: its row without the record (which may be large), and the
    state a dead job died in (where a replay puts it)."""

    job_id: int
    study_uid: str
    version: int
    state: JobState
    priority: int
    attempts: int
    not_before: float
    created_at: float
    updated_at: float
    last_instance_at: float
    reason: str
    lease_owner: str
    leased_until: float
    dead_from: JobState | None


def _summary(row: Row) -> JobSummary:
    return JobSummary(
        int(row["job_id"]),
        row["study_uid"],
        int(row["version"]),
        JobState(row["state"]),
        int(row["priority"]),
        int(row["attempts"]),
        float(row["not_before"]),
        float(row["created_at"]),
        float(row["updated_at"]),
        float(row["last_instance_at"]),
        row["reason"],
        row["lease_owner"],
        float(row["leased_until"]),
        JobState(row["dead_from"]) if row["dead_from"] else None,
    )


def _taken_back(row: Row, actor: str, now: float) -> AuditEvent:
    detail = {"owner": row["lease_owner"], "state": row["state"], "expires_in_s": round(row["leased_until"] - now, 3)}
    return AuditEvent(
        AuditEventType.LEASE_TAKEN_BACK, actor, row["study_uid"], job_id=int(row["job_id"]), detail=detail
    )


class Jobs:
    """The job table: the durable queue every stage leases from."""

    def __init__(self, db: Database, codec: RecordCodec, cell: str = "") -> None:
        self._db = db
        self._codec = codec
        # A cell's actors lease only its jobs (their files are on its node). One machine has
        # the one cell '' and no filter, so its lease statement is unchanged.
        self._in_cell, self._cell_args = (" AND cell = ?", (cell,)) if cell else ("", ())

    def _channel(self, state: JobState) -> str:
        return self._db.channel(f"jobs_{state.value}")

    # ----------------------------------------------------------------- leasing
    def lease(self, state: JobState, owner: str, limit: int, lease_s: float, now: float) -> list[Job]:
        """Take up to ``limit`` due jobs in ``state`` that no live worker holds.

        Higher priority first, then oldest. An expired lease (a crashed worker) is taken again.
        """
        if limit <= 0:
            return []

        def take(tx: Tx) -> list[Any]:
            # ``+not_before`` keeps the planner on the lease-order index (migration 0004): it
            # walks due jobs in priority order and stops at ``limit``, instead of sorting them.
            return tx.all(
                f"UPDATE jobs SET lease_owner = ?, leased_until = ? WHERE job_id IN ("
                " SELECT job_id FROM jobs WHERE state = ? AND +not_before <= ? AND leased_until <= ?"
                f"{self._in_cell} ORDER BY priority DESC, created_at, job_id LIMIT ?{tx.skip_locked})"
                f" RETURNING {_JOB_COLUMNS}",
                (owner, now + lease_s, state.value, now, now, *self._cell_args, limit),
            )

        jobs = [job_of(r, self._codec) for r in self._db.run(take)]
        return sorted(jobs, key=lambda j: (-j.priority, j.created_at, j.job_id))

    def lease_job(self, job_id: int, state: JobState, owner: str, lease_s: float, now: float) -> Job | None:
        """Lease one given job if it is in ``state`` and nobody holds it (else ``None``)."""
        row = self._db.run(
            lambda tx: tx.one(
                "UPDATE jobs SET lease_owner = ?, leased_until = ? WHERE job_id = ? AND state = ?"
                f" AND leased_until <= ? RETURNING {_JOB_COLUMNS}",
                (owner, now + lease_s, job_id, state.value, now),
            )
        )
        return job_of(row, self._codec) if row is not None else None

    def renew(self, owner: str, job_ids: Sequence[int], until: float) -> None:
        """Extend the leases this owner holds on jobs still in flight."""
        if job_ids:
            self._db.run(
                lambda tx: tx.execute(
                    f"UPDATE jobs SET leased_until = ? WHERE lease_owner = ? AND job_id IN ({marks(len(job_ids))})",
                    (until, owner, *job_ids),
                )
            )

    def postpone(self, job: Job, not_before: float) -> None:
        """Give a lease back and make the job due again only at ``not_before``."""
        self._db.run(
            lambda tx: tx.execute(
                "UPDATE jobs SET lease_owner = '', leased_until = 0, not_before = ?"
                " WHERE job_id = ? AND lease_owner = ?",
                (not_before, job.job_id, job.lease_owner),
            )
        )

    def release(self, job: Job) -> None:
        """Give a lease back without any change (e.g. on shutdown)."""
        self._db.run(
            lambda tx: tx.execute(
                "UPDATE jobs SET lease_owner = '', leased_until = 0 WHERE job_id = ? AND lease_owner = ?",
                (job.job_id, job.lease_owner),
            )
        )

    def lease_owners(self, now: float) -> dict[str, int]:
        """Who holds leases at ``now``: owner -> jobs it holds (expired leases left out)."""
        working = [s.value for s in JobState if not s.is_terminal]  # a finished job holds no lease
        with self._db.read() as tx:
            rows = tx.all(
                f"SELECT lease_owner, COUNT(*) AS n FROM jobs WHERE state IN ({marks(len(working))})"
                " AND lease_owner <> '' AND leased_until > ? GROUP BY lease_owner",
                (*working, now),
            )
        return {r["lease_owner"]: int(r["n"]) for r in rows}

    def take_back(self, owners: Sequence[str], actor: str, now: float) -> int:
        """Release every lease these (dead) owners hold, with one audit event per job, before
        the leases expire (``core.leases`` decides who is dead).

        Args:
            owners: The owners whose leases go.
            actor: Who takes them back, for the audit trail.
            now: Current time.

        Returns:
            How many leases were taken back.
        """
        if not owners:
            return 0

        def take(tx: Tx) -> int:
            rows = tx.all(
                "SELECT job_id, study_uid, state, lease_owner, leased_until FROM jobs"
                f" WHERE lease_owner IN ({marks(len(owners))}) AND leased_until > ?{tx.for_update}",
                (*owners, now),
            )
            for r in rows:
                tx.execute(
                    "UPDATE jobs SET lease_owner = '', leased_until = 0 WHERE job_id = ? AND lease_owner = ?",
                    (r["job_id"], r["lease_owner"]),
                )
            for state in sorted({r["state"] for r in rows}):
                tx.notify(self._channel(JobState(state)), "")
            append_events(tx, [_taken_back(r, actor, now) for r in rows], now)
            return len(rows)

        return self._db.run(take)

    def wake_waiting(self, state: JobState, now: float) -> int:
        """Make the jobs in ``state`` that wait out a peer's outage due now (the peer is back,
        e.g. the model applications finished deploying); return how many."""

        def wake(tx: Tx) -> int:
            woken = tx.execute(
                "UPDATE jobs SET not_before = ? WHERE state = ? AND waits > 0 AND not_before > ?"
                f" AND lease_owner = ''{self._in_cell}",
                (now, state.value, now, *self._cell_args),
            )
            if woken:
                tx.notify(self._channel(state), "")
            return woken

        return self._db.run(wake)

    def wait_for_work(self, state: JobState, max_wait_s: float, now: float) -> None:
        """Idle until work in ``state`` may be due: a notification, the next ``not_before``
        of a job in that state, or ``max_wait_s``, whichever comes first."""
        if self._db.notifies:
            with self._db.read() as tx:
                row = tx.one(
                    f"SELECT MIN(not_before) AS due FROM jobs WHERE state = ? AND not_before > ?{self._in_cell}",
                    (state.value, now, *self._cell_args),
                )
            if row is not None and row["due"] is not None:
                max_wait_s = min(max_wait_s, max(0.0, float(row["due"]) - now))
        self._db.wait(self._channel(state), max_wait_s)

    def wake(self, state: JobState) -> None:
        """Wake this process's stage of ``state`` now (a slot came free)."""
        self._db.wake(self._channel(state))

    # ------------------------------------------------------------- transitions
    def transition(
        self,
        job: Job,
        new_state: JobState,
        now: float,
        *,
        events: Sequence[AuditEvent] = (),
        record: JobRecord | None = None,
        reason: str | None = None,
        priority: int | None = None,
        not_before: float | None = None,
        effects: Sequence[Effect] = (),
    ) -> None:
        """Move a leased job on and release the lease, with its effects and audit, atomically.

        Args:
            job: The job as leased (its ``state`` and ``lease_owner`` must still hold).
            new_state: Where it goes; must be allowed by ``core.ledger.can_transition``.
            now: Current time.
            events: Audit events recorded in the same transaction.
            record: The job's record with this stage's section (default: unchanged).
            reason: Replaces the job's reason text when given.
            priority: Raises the job's priority to at least this.
            not_before: When the next stage may take it (default: now).
            effects: What else commits with it (``core.ledger`` effects).

        Raises:
            ValueError: The transition is not allowed.
            LeaseLost: The job changed state or owner meanwhile.
        """
        if not can_transition(job.state, new_state):
            raise ValueError(f"job {job.job_id}: {job.state} -> {new_state} is not allowed")
        data = self._codec.dump_job(record if record is not None else job.record)
        # Encoded before the transaction: a big section becomes a blob through its own write,
        # never a second connection taken while this transaction holds one.
        encoded = {
            id(e): [self._codec.dump_prediction(v.prediction) for v in e.versions]
            for e in effects
            if isinstance(e, RecordSrVersions)
        }
        floor = priority if priority is not None else 0

        def move(tx: Tx) -> None:
            changed = tx.execute(
                "UPDATE jobs SET state = ?, updated_at = ?, lease_owner = '', leased_until = 0,"
                " waits = 0, not_before = ?, data = ?, reason = COALESCE(?, reason),"
                " priority = CASE WHEN priority > ? THEN priority ELSE ? END,"
                " dead_from = CASE WHEN ? = 'dead' THEN state ELSE dead_from END"
                " WHERE job_id = ? AND state = ? AND lease_owner = ?",
                (
                    new_state.value,
                    now,
                    now if not_before is None else not_before,
                    data,
                    reason,
                    floor,
                    floor,
                    new_state.value,
                    job.job_id,
                    job.state.value,
                    job.lease_owner,
                ),
            )
            if changed != 1:
                raise LeaseLost(job.job_id, job.lease_owner)
            for effect in effects:
                self._apply(tx, job, effect, now, encoded.get(id(effect), []))
            if not new_state.is_terminal:
                tx.notify(self._channel(new_state), "")
            append_events(tx, events, now)

        self._db.run(move)

    def _apply(self, tx: Tx, job: Job, effect: Effect, now: float, predictions: Sequence[str]) -> None:
        if isinstance(effect, SetAside):
            apply_set_aside(tx, job.job_id, effect)
        elif isinstance(effect, CoverStudy):
            apply_cover_study(tx, job.job_id, job.study_instance_uid)
        elif isinstance(effect, HoldInQuarantine):
            apply_hold(tx, job.job_id, effect, now)
        elif isinstance(effect, QueueOutbox):
            apply_queue(tx, job.job_id, effect, now)
        elif isinstance(effect, RecordSrVersions):
            apply_versions(tx, effect, predictions, now, order_priority_of(job.record.context))
        elif isinstance(effect, RaiseReviewFlag):
            apply_flag(tx, job.job_id, effect, now)
        elif isinstance(effect, MarkSrVersions):
            apply_mark(tx, effect, now)
        elif isinstance(effect, WithdrawOutbox):
            apply_withdraw(tx, job.job_id, effect)
        else:  # pragma: no cover - Effect is a closed union
            raise TypeError(f"effect: got {type(effect).__name__}; expected a core.ledger effect")

    def defer(
        self, job: Job, now: float, policy: RetryPolicy, error: str, *, unavailable: bool, actor: str
    ) -> JobState:
        """Put a leased job back to be retried later, or make it dead.

        Args:
            job: The leased job.
            now: Current time.
            policy: Backoff and the dead-letter limit.
            error: What went wrong (no PHI).
            unavailable: A peer could not be reached: wait without spending the retry budget.
            actor: The stage, for the audit trail.

        Returns:
            The job's state afterwards (``DEAD`` when retries are exhausted).

        Raises:
            LeaseLost: The job changed state or owner meanwhile.
        """
        attempts = job.attempts + (0 if unavailable else 1)
        if not unavailable and policy.is_exhausted(attempts):
            event = AuditEvent(
                AuditEventType.JOB_DEAD,
                actor,
                job.study_instance_uid,
                job_id=job.job_id,
                detail={"error": error, "attempts": attempts, "state": str(job.state)},
            )
            self._db.run(lambda tx: self._die(tx, job, attempts, error, event, now))
            return JobState.DEAD
        self._db.run(lambda tx: self._retry_later(tx, job, attempts, error, unavailable, policy, actor, now))
        return job.state

    @staticmethod
    def _die(tx: Tx, job: Job, attempts: int, error: str, event: AuditEvent, now: float) -> None:
        changed = tx.execute(
            "UPDATE jobs SET state = 'dead', dead_from = state, attempts = ?, reason = ?,"
            " lease_owner = '', leased_until = 0, updated_at = ?"
            " WHERE job_id = ? AND state = ? AND lease_owner = ?",
            (attempts, error, now, job.job_id, job.state.value, job.lease_owner),
        )
        if changed != 1:
            raise LeaseLost(job.job_id, job.lease_owner)
        append_events(tx, [event], now)

    @staticmethod
    def _retry_later(
        tx: Tx, job: Job, attempts: int, error: str, unavailable: bool, policy: RetryPolicy, actor: str, now: float
    ) -> None:
        row = tx.one("SELECT waits FROM jobs WHERE job_id = ?", (job.job_id,))
        waits = (int(row["waits"]) + 1 if row else 1) if unavailable else 0
        delay = policy.unavailable_delay(waits) if unavailable else policy.delay_after(attempts)
        changed = tx.execute(
            "UPDATE jobs SET attempts = ?, waits = ?, not_before = ?, reason = ?, lease_owner = '',"
            " leased_until = 0, updated_at = ? WHERE job_id = ? AND state = ? AND lease_owner = ?",
            (attempts, waits, now + delay, error, now, job.job_id, job.state.value, job.lease_owner),
        )
        if changed != 1:
            raise LeaseLost(job.job_id, job.lease_owner)
        if not unavailable or waits == 1:  # one audit line per outage, not one per poll
            detail = {"error": error, "attempts": attempts, "retry_in_s": round(delay, 3), "unavailable": unavailable}
            append_events(
                tx,
                [AuditEvent(AuditEventType.JOB_RETRY, actor, job.study_instance_uid, job_id=job.job_id, detail=detail)],
                now,
            )

    def replay(self, job_id: int, actor: str, now: float) -> JobState:
        """Put a dead job back into the state it died in, with a fresh retry budget.

        Raises:
            RejectedInput: The job does not exist or is not dead.
        """

        def revive(tx: Tx) -> JobState:
            row = tx.one("SELECT state, dead_from, study_uid FROM jobs WHERE job_id = ?" + tx.for_update, (job_id,))
            if row is None or row["state"] != JobState.DEAD.value or not row["dead_from"]:
                got = "no such job" if row is None else f"state {row['state']}"
                raise RejectedInput(f"job {job_id}: got {got}; expected a dead job", str(job_id))
            into = JobState(row["dead_from"])
            tx.execute(
                "UPDATE jobs SET state = ?, attempts = 0, waits = 0, not_before = ?,"
                " lease_owner = '', leased_until = 0, updated_at = ?, dead_from = ''"
                " WHERE job_id = ?",
                (into.value, now, now, job_id),
            )
            tx.notify(self._channel(into), "")
            append_events(
                tx,
                [
                    AuditEvent(
                        AuditEventType.JOB_REPLAYED, actor, row["study_uid"], job_id=job_id, detail={"into": into.value}
                    )
                ],
                now,
            )
            return into

        return self._db.run(revive)

    def reopen(self, study_uid: str, now: float) -> int | None:
        """Open a new receiving version of a study unless one is receiving (a release).

        Returns:
            The new job's ID, or ``None`` when the study already had a receiving job.
        """

        def open_(tx: Tx) -> int | None:
            return reopen_study(tx, study_uid, now, self._channel(JobState.RECEIVING))

        return self._db.run(open_)

    # ------------------------------------------------------------------- reads
    def get(self, job_id: int) -> Job | None:
        """One job."""
        with self._db.read() as tx:
            row = tx.one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,))
        return job_of(row, self._codec) if row is not None else None

    def for_study(self, study_uid: str) -> list[Job]:
        """Every job of a study, oldest version first."""
        with self._db.read() as tx:
            rows = tx.all(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE study_uid = ? ORDER BY version", (study_uid,))
        return [job_of(r, self._codec) for r in rows]

    def summaries(
        self,
        state: JobState | None = None,
        study_uid: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[JobSummary]:
        """Jobs of every cell, newest first, optionally of one state and one study.

        Args:
            state: Only jobs in this state.
            study_uid: Only jobs of this study.
            limit: At most this many.
            before: Only jobs with a lower ID (the next page: the last ID of this one).
        """
        where: list[str] = []
        args: list[object] = []
        for clause, value in (("state = ?", state), ("study_uid = ?", study_uid), ("job_id < ?", before)):
            if value is not None:
                where.append(clause)
                args.append(value.value if isinstance(value, JobState) else value)
        sql = f"SELECT {_SUMMARY_COLUMNS} FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        with self._db.read() as tx:
            rows = tx.all(sql + " ORDER BY job_id DESC LIMIT ?", [*args, limit])
        return [_summary(r) for r in rows]

    def summary(self, job_id: int) -> JobSummary | None:
        """One job's summary (``None``: no such job)."""
        with self._db.read() as tx:
            row = tx.one(f"SELECT {_SUMMARY_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,))
        return _summary(row) if row is not None else None

    def raw_record(self, job_id: int) -> str:
        """The stored text of a job's record (tests check its size)."""
        with self._db.read() as tx:
            row = tx.one("SELECT data FROM jobs WHERE job_id = ?", (job_id,))
        return "" if row is None else self._codec.seal.open_text(str(row["data"]))
