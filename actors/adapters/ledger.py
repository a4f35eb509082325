"""The SQLite ledger (WAL, synchronous=FULL): durable queue, job states, outbox and audit.

Every process (listener, each stage actor, the CLI) opens its own connection to the same file;
SQLite serialises writers. Each state change and the audit events that describe it commit in
one transaction, so the audit trail can never disagree with the ledger.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.audit import GENESIS, AuditEvent, ChainBreak, chain_hash, verify_chain
from core.errors import LeaseLost, RejectedInput
from core.ledger import RetryPolicy, can_transition, instance_state
from core.routing import AiSwitches
from core.types import AuditEventType, InstanceMeta, InstanceState, Job, JobState

__all__ = ["RecordResult", "SqliteLedger"]

logger = logging.getLogger(__name__)

_SCHEMA = (Path(__file__).with_name("ledger_schema.sql")).read_text()
_ADDED_COLUMNS = (
    ("instances", "accession_key", "TEXT NOT NULL DEFAULT ''"),  # issue #6: HL7 context join
    ("outbox", "ehr_queued", "INTEGER NOT NULL DEFAULT 0"),  # issue #6: 1 = FHIR report queued
    ("outbox", "series_uid", "TEXT NOT NULL DEFAULT ''"),  # issue #3: our result series (SR, PM)
)
"""Columns added to existing tables after they shipped (ALTER TABLE, guarded)."""


def _add_columns(con: sqlite3.Connection) -> None:
    """Add each missing column of ``_ADDED_COLUMNS`` (an additive, idempotent migration)."""
    for table, column, decl in _ADDED_COLUMNS:
        have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            try:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            except sqlite3.OperationalError as exc:  # another process added it first
                if "duplicate column" not in str(exc):
                    raise


class RecordResult:
    """Outcome of recording a received instance."""

    NEW = "new"
    DUPLICATE = "duplicate"


class SqliteLedger:
    """Thread-safe access to the ledger file for one process."""

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        """Open (and create) the ledger.

        Args:
            path: The SQLite file.
            busy_timeout_s: How long a writer waits for another process's transaction.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._con = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
        )
        self._con.row_factory = sqlite3.Row
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=FULL")
        self._con.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        with self._lock:
            self._con.executescript(_SCHEMA)
            _add_columns(self._con)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._con.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        """A write transaction that takes the write lock at once (BEGIN IMMEDIATE)."""
        with self._lock:
            cur = self._con.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._con.execute(sql, args).fetchall()

    # ----------------------------------------- for adapters built on the ledger
    def transaction(self) -> Any:
        """A write transaction (``BEGIN IMMEDIATE``) yielding a cursor; rolled back on error.

        For adapters that keep their own tables in the ledger file (e.g. the quarantine),
        so that their changes and the audit events that describe them commit together.
        """
        return self._tx()

    def append_audit(self, cur: sqlite3.Cursor, events: Iterable[AuditEvent], now: float) -> None:
        """Append audit events inside a transaction opened with :meth:`transaction`."""
        self._append_audit(cur, events, now)

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a read-only query; rows as dicts."""
        return [dict(r) for r in self._read(sql, args)]

    # ----------------------------------------------------------------- audit
    @staticmethod
    def _append_audit(cur: sqlite3.Cursor, events: Iterable[AuditEvent], now: float) -> None:
        last = cur.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last[0], last[1]) if last else (0, GENESIS)
        for event in events:
            seq += 1
            canonical = event.canonical(now)
            digest = chain_hash(prev, canonical)
            cur.execute(
                "INSERT INTO audit (seq, at, type, actor, study_uid, sop_instance_uid, job_id,"
                " detail, canonical, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    seq,
                    now,
                    str(event.type),
                    event.actor,
                    event.study_uid,
                    event.sop_instance_uid,
                    event.job_id,
                    json.dumps(event.detail, sort_keys=True, default=str),
                    canonical,
                    prev,
                    digest,
                ),
            )
            prev = digest

    def audit(self, events: Iterable[AuditEvent], now: float) -> None:
        """Append events that are not tied to a state change."""
        with self._tx() as cur:
            self._append_audit(cur, events, now)

    def audit_events(
        self, study_uid: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Return stored audit events (oldest first), optionally for one study."""
        where, args = ("WHERE study_uid = ?", [study_uid]) if study_uid else ("", [])
        rows = self._read(
            f"SELECT seq, at, type, actor, study_uid, sop_instance_uid, job_id, detail FROM audit"
            f" {where} ORDER BY seq LIMIT ?",
            [*args, limit],
        )
        return [dict(r) | {"detail": json.loads(r["detail"])} for r in rows]

    def verify_audit_chain(self) -> ChainBreak | None:
        """Check the whole audit hash chain; ``None`` when intact."""
        rows = self._read("SELECT seq, canonical, prev_hash, hash FROM audit ORDER BY seq")
        return verify_chain((r[0], r[1], r[2], r[3]) for r in rows)

    # -------------------------------------------------------------- listener
    def has_instance(self, sop_instance_uid: str) -> bool:
        """Whether an instance with this SOP Instance UID was already recorded."""
        return bool(
            self._read("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
        )

    def record_instance(
        self, meta: InstanceMeta, now: float, complete_at: float, actor: str
    ) -> str:
        """Record a durable instance and attach it to its study's receiving job.

        Creates a new job (next version) when the study has no job still receiving, e.g. for
        an instance that arrives after the study's result.

        Args:
            meta: What was received (the file is already durable at ``meta.path``).
            now: Current time.
            complete_at: When the study counts as complete if nothing else arrives.
            actor: Who received it, for the audit trail.

        Returns:
            ``RecordResult.NEW`` or ``RecordResult.DUPLICATE``.
        """
        with self._tx() as cur:
            old = cur.execute(
                "SELECT sha256 FROM instances WHERE sop_instance_uid = ?", (meta.sop_instance_uid,)
            ).fetchone()
            if old is not None:
                self._append_audit(cur, [_duplicate_event(meta, old[0], actor)], now)
                return RecordResult.DUPLICATE
            prior_of = _prior_retrieval_of(cur, meta.series_instance_uid)
            job_id = None if prior_of else self._receiving_job(cur, meta, now, complete_at)
            cur.execute(
                "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, series_uid,"
                " modality, transfer_syntax, body_part, series_description, patient_key,"
                " calling_ae, path, sha256, size, received_at, job_id, accession_key)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    meta.sop_instance_uid,
                    meta.sop_class_uid,
                    meta.study_instance_uid,
                    meta.series_instance_uid,
                    meta.modality,
                    meta.transfer_syntax_uid,
                    meta.body_part,
                    meta.series_description,
                    meta.patient_key,
                    meta.calling_ae,
                    meta.path,
                    meta.sha256,
                    meta.size,
                    meta.received_at,
                    job_id,
                    meta.accession_key,
                ),
            )
            detail = {
                "calling_ae": meta.calling_ae,
                "sha256": meta.sha256,
                "transfer_syntax": meta.transfer_syntax_uid,
                "patient_key": meta.patient_key,
            }
            if prior_of:  # asked for as a prior: kept, set aside, starts no job (issue #5)
                cur.execute(
                    "UPDATE instances SET override = 'skipped', reason = ? WHERE sop_instance_uid = ?",
                    (f"retrieved as a prior for study {prior_of}; not reported", meta.sop_instance_uid),
                )
                detail["origin"] = "prior_retrieval"
            event = AuditEvent(
                AuditEventType.INSTANCE_RECEIVED,
                actor,
                meta.study_instance_uid,
                meta.sop_instance_uid,
                job_id,
                detail,
            )
            self._append_audit(cur, [event], now)
            return RecordResult.NEW

    @staticmethod
    def _receiving_job(
        cur: sqlite3.Cursor, meta: InstanceMeta, now: float, complete_at: float
    ) -> int:
        row = cur.execute(
            "SELECT job_id FROM jobs WHERE study_uid = ? AND state = ? ORDER BY version DESC"
            " LIMIT 1",
            (meta.study_instance_uid, JobState.RECEIVING.value),
        ).fetchone()
        if row is not None:
            cur.execute(
                "UPDATE jobs SET last_instance_at = ?, not_before = ?, updated_at = ?"
                " WHERE job_id = ?",
                (meta.received_at, complete_at, now, row[0]),
            )
            return int(row[0])
        version = cur.execute(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM jobs WHERE study_uid = ?",
            (meta.study_instance_uid,),
        ).fetchone()[0]
        cur.execute(
            "INSERT INTO jobs (study_uid, version, state, not_before, created_at, updated_at,"
            " last_instance_at) VALUES (?,?,?,?,?,?,?)",
            (
                meta.study_instance_uid,
                version,
                JobState.RECEIVING.value,
                complete_at,
                now,
                now,
                meta.received_at,
            ),
        )
        return int(cur.lastrowid or 0)

    # ---------------------------------------------------------------- stages
    def lease(
        self, state: JobState, owner: str, limit: int, lease_s: float, now: float
    ) -> list[Job]:
        """Take up to ``limit`` jobs in ``state`` that are due and not leased by a live worker.

        Higher priority first, then oldest. An expired lease (a crashed worker) is taken again.
        """
        if limit <= 0:
            return []
        with self._tx() as cur:
            rows = cur.execute(
                "UPDATE jobs SET lease_owner = ?, leased_until = ? WHERE job_id IN ("
                " SELECT job_id FROM jobs WHERE state = ? AND not_before <= ? AND leased_until <= ?"
                " ORDER BY priority DESC, created_at, job_id LIMIT ?) RETURNING *",
                (owner, now + lease_s, state.value, now, now, limit),
            ).fetchall()
        jobs = [_job(r) for r in rows]
        return sorted(jobs, key=lambda j: (-j.priority, j.created_at, j.job_id))

    def transition(
        self,
        job: Job,
        new_state: JobState,
        now: float,
        *,
        events: Sequence[AuditEvent] = (),
        data: dict[str, Any] | None = None,
        reason: str | None = None,
        priority: int | None = None,
        not_before: float | None = None,
        extra: Sequence[tuple[str, Sequence[Any]]] = (),
    ) -> None:
        """Move a leased job to ``new_state`` and release the lease, atomically with its audit.

        Args:
            job: The job as leased (its ``state`` and ``lease_owner`` must still hold).
            new_state: Where it goes; must be allowed by ``core.ledger.can_transition``.
            now: Current time.
            events: Audit events recorded in the same transaction.
            data: Keys merged into the job's JSON data.
            reason: Replaces the job's reason text when given.
            priority: Raises the job's priority to at least this.
            not_before: When the next stage may take it (default: now).
            extra: More ``(sql, args)`` statements to run in the same transaction.

        Raises:
            ValueError: The transition is not allowed.
            LeaseLost: The job changed state or owner meanwhile.
        """
        if not can_transition(job.state, new_state):
            raise ValueError(f"job {job.job_id}: {job.state} -> {new_state} is not allowed")
        merged = dict(job.data) | dict(data or {})
        with self._tx() as cur:
            cur.execute(
                "UPDATE jobs SET state = ?, updated_at = ?, lease_owner = '', leased_until = 0,"
                " waits = 0, not_before = ?, data = ?, reason = COALESCE(?, reason),"
                " priority = MAX(priority, ?),"
                " dead_from = CASE WHEN ? = 'dead' THEN state ELSE dead_from END"
                " WHERE job_id = ? AND state = ? AND lease_owner = ?",
                (
                    new_state.value,
                    now,
                    now if not_before is None else not_before,
                    json.dumps(merged, default=str),
                    reason,
                    priority if priority is not None else 0,
                    new_state.value,
                    job.job_id,
                    job.state.value,
                    job.lease_owner,
                ),
            )
            if cur.rowcount != 1:
                raise LeaseLost(job.job_id, job.lease_owner)
            for sql, args in extra:
                cur.execute(sql, args)
            self._append_audit(cur, events, now)

    def defer(
        self,
        job: Job,
        now: float,
        policy: RetryPolicy,
        error: str,
        *,
        unavailable: bool,
        actor: str,
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
            count = ("UPDATE jobs SET attempts = ? WHERE job_id = ?", (attempts, job.job_id))
            self.transition(job, JobState.DEAD, now, events=[event], reason=error, extra=[count])
            return JobState.DEAD
        with self._tx() as cur:
            row = cur.execute("SELECT waits FROM jobs WHERE job_id = ?", (job.job_id,)).fetchone()
            waits = (int(row[0]) + 1 if row else 1) if unavailable else 0
            delay = policy.unavailable_delay(waits) if unavailable else policy.delay_after(attempts)
            cur.execute(
                "UPDATE jobs SET attempts = ?, waits = ?, not_before = ?, reason = ?,"
                " lease_owner = '', leased_until = 0, updated_at = ?"
                " WHERE job_id = ? AND state = ? AND lease_owner = ?",
                (attempts, waits, now + delay, error, now, job.job_id, job.state.value, job.lease_owner),
            )
            if cur.rowcount != 1:
                raise LeaseLost(job.job_id, job.lease_owner)
            if not unavailable or waits == 1:  # one audit line per outage, not one per poll
                detail = {"error": error, "attempts": attempts, "retry_in_s": round(delay, 3)}
                event = AuditEvent(
                    AuditEventType.JOB_RETRY,
                    actor,
                    job.study_instance_uid,
                    job_id=job.job_id,
                    detail=detail | {"unavailable": unavailable},
                )
                self._append_audit(cur, [event], now)
        return job.state

    def renew(self, owner: str, job_ids: Sequence[int], until: float) -> None:
        """Extend the leases this owner holds on jobs still in flight."""
        marks = ",".join("?" * len(job_ids))
        with self._tx() as cur:
            cur.execute(
                f"UPDATE jobs SET leased_until = ? WHERE lease_owner = ? AND job_id IN ({marks})",
                (until, owner, *job_ids),
            )

    def lease_job(
        self, job_id: int, state: JobState, owner: str, lease_s: float, now: float
    ) -> Job | None:
        """Lease one given job if it is in ``state`` and nobody holds it (else ``None``)."""
        with self._tx() as cur:
            row = cur.execute(
                "UPDATE jobs SET lease_owner = ?, leased_until = ? WHERE job_id = ? AND state = ?"
                " AND leased_until <= ? RETURNING *",
                (owner, now + lease_s, job_id, state.value, now),
            ).fetchone()
        return _job(row) if row is not None else None

    def postpone(self, job: Job, not_before: float) -> None:
        """Give a lease back and make the job due again only at ``not_before``."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE jobs SET lease_owner = '', leased_until = 0, not_before = ?"
                " WHERE job_id = ? AND lease_owner = ?",
                (not_before, job.job_id, job.lease_owner),
            )

    def release(self, job: Job) -> None:
        """Give a lease back without any change (e.g. on shutdown)."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE jobs SET lease_owner = '', leased_until = 0"
                " WHERE job_id = ? AND lease_owner = ?",
                (job.job_id, job.lease_owner),
            )

    def replay(self, job_id: int, actor: str, now: float) -> JobState:
        """Put a dead job back into the state it died in, with a fresh retry budget.

        Raises:
            RejectedInput: The job does not exist or is not dead.
        """
        with self._tx() as cur:
            row = cur.execute(
                "SELECT state, dead_from, study_uid FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
            if row is None or row[0] != JobState.DEAD.value or not row[1]:
                got = "no such job" if row is None else f"state {row[0]}"
                raise RejectedInput(f"job {job_id}: got {got}; expected a dead job", str(job_id))
            cur.execute(
                "UPDATE jobs SET state = ?, attempts = 0, waits = 0, not_before = ?,"
                " lease_owner = '', leased_until = 0, updated_at = ?, dead_from = ''"
                " WHERE job_id = ?",
                (row[1], now, now, job_id),
            )
            event = AuditEvent(
                AuditEventType.JOB_REPLAYED, actor, row[2], job_id=job_id,
                detail={"into": row[1]},
            )
            self._append_audit(cur, [event], now)
            return JobState(row[1])

    def get_job(self, job_id: int) -> Job | None:
        """Return one job."""
        rows = self._read("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def jobs_for_study(self, study_uid: str) -> list[Job]:
        """Return every job of a study, oldest version first."""
        rows = self._read("SELECT * FROM jobs WHERE study_uid = ? ORDER BY version", (study_uid,))
        return [_job(r) for r in rows]

    def complete_study(self, job: Job, now: float, events: Sequence[AuditEvent]) -> None:
        """Mark a receiving job complete and make it cover every instance of its study."""
        link = (
            "INSERT OR IGNORE INTO job_instances (job_id, sop_instance_uid)"
            " SELECT ?, sop_instance_uid FROM instances"
            " WHERE study_uid = ? AND COALESCE(override, '') != 'discarded'"
        )
        point = (
            "UPDATE instances SET job_id = ? WHERE study_uid = ?"
            " AND COALESCE(override, '') != 'discarded'"
        )
        reset = (  # every instance is decided afresh for this job version
            "UPDATE instances SET override = NULL, reason = '' WHERE study_uid = ?"
            " AND override IN ('quarantined', 'skipped')"
        )
        args = (job.job_id, job.study_instance_uid)
        extra = [(link, args), (point, args), (reset, (job.study_instance_uid,))]
        self.transition(job, JobState.COMPLETE, now, events=events, extra=extra)

    def set_aside(
        self,
        job: Job,
        new_state: JobState,
        now: float,
        *,
        override: str,
        reasons: dict[str, str],
        events: Sequence[AuditEvent],
        data: dict[str, Any] | None = None,
        reason: str | None = None,
        priority: int | None = None,
    ) -> None:
        """Transition a job and set some of its instances aside, in one transaction.

        Args:
            job: The leased job.
            new_state: Its next state.
            now: Current time.
            override: ``"quarantined"`` or ``"skipped"``.
            reasons: ``{sop_instance_uid: reason}`` of the instances set aside.
            events: Audit events.
            data: Keys merged into the job data.
            reason: Job reason text.
            priority: Priority floor.
        """
        extra = [
            ("UPDATE instances SET override = ?, reason = ? WHERE sop_instance_uid = ?",
             (override, why[:2000], uid))
            for uid, why in reasons.items()
        ]
        self.transition(
            job, new_state, now, events=events, data=data, reason=reason, priority=priority,
            extra=extra,
        )

    def written(
        self,
        job: Job,
        items: Sequence[dict[str, str]],
        now: float,
        events: Sequence[AuditEvent],
        results: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Put result objects in the outbox and mark the job written, in one transaction.

        Args:
            job: The leased job (state ``inferred``).
            items: Each with ``sop_instance_uid``, ``sop_class_uid``, ``kind``, ``family``,
                ``path`` (the file is already durable) and ``series_instance_uid``.
            now: Current time.
            events: Audit events.
            results: SR versions to record in ``sr_results``: each with ``sop_instance_uid``,
                ``sop_class_uid``, ``series_instance_uid``, ``family``, ``model_name``,
                ``model_version``, ``predecessor_uid`` and ``prediction`` (JSON-able).
        """
        extra = [
            (
                "INSERT OR IGNORE INTO outbox (job_id, sop_instance_uid, sop_class_uid, kind,"
                " family, path, created_at, series_uid) VALUES (?,?,?,?,?,?,?,?)",
                (
                    job.job_id,
                    it["sop_instance_uid"],
                    it["sop_class_uid"],
                    it["kind"],
                    it.get("family", ""),
                    it["path"],
                    now,
                    it.get("series_instance_uid", ""),
                ),
            )
            for it in items
        ]
        extra += [_result_row(job, r, now) for r in results]
        self.transition(job, JobState.WRITTEN, now, events=events, extra=extra)

    def job_instances(self, job_id: int) -> list[InstanceMeta]:
        """Return the instances a job covers, in arrival order."""
        rows = self._read(
            "SELECT i.* FROM instances i JOIN job_instances ji"
            " ON ji.sop_instance_uid = i.sop_instance_uid WHERE ji.job_id = ?"
            " ORDER BY i.received_at, i.sop_instance_uid",
            (job_id,),
        )
        return [_instance(r) for r in rows]

    def instance_overrides(self, job_id: int) -> dict[str, str]:
        """Return ``{sop_instance_uid: override}`` for the job's set-aside instances."""
        rows = self._read(
            "SELECT i.sop_instance_uid, i.override FROM instances i JOIN job_instances ji"
            " ON ji.sop_instance_uid = i.sop_instance_uid"
            " WHERE ji.job_id = ? AND i.override IS NOT NULL",
            (job_id,),
        )
        return {r[0]: r[1] for r in rows}

    # ---------------------------------------------------------------- outbox
    def outbox_items(self, job_id: int, state: str | None = None) -> list[dict[str, Any]]:
        """Return the job's outbox items, optionally only those in ``state``."""
        sql = "SELECT * FROM outbox WHERE job_id = ?"
        args: list[Any] = [job_id]
        if state:
            sql += " AND state = ?"
            args.append(state)
        return [dict(r) for r in self._read(sql + " ORDER BY item_id", args)]

    def mark_delivered(self, item_id: int, now: float, event: AuditEvent) -> None:
        """Record that the PACS answered success for one outbox item."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE outbox SET state = 'delivered', delivered_at = ?, attempts = attempts + 1"
                " WHERE item_id = ?",
                (now, item_id),
            )
            self._append_audit(cur, [event], now)

    def note_delivery_failure(self, item_id: int, error: str) -> None:
        """Record a failed attempt for one outbox item."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE item_id = ?",
                (error[:500], item_id),
            )

    def results_for_ehr(self, delivered_since: float, limit: int = 100) -> list[dict[str, Any]]:
        """SR outbox items the PACS accepted that are not yet queued for the EHR (issue #6)."""
        rows = self._read(
            "SELECT o.*, j.priority FROM outbox o JOIN jobs j ON j.job_id = o.job_id"
            " WHERE o.state = 'delivered' AND o.kind = 'sr' AND o.ehr_queued = 0"
            " AND o.delivered_at >= ? ORDER BY j.priority DESC, o.delivered_at LIMIT ?",
            (delivered_since, limit),
        )
        return [dict(r) for r in rows]

    def mark_ehr_queued(self, item_ids: Sequence[int]) -> None:
        """Record that these SRs' FHIR reports are in the EHR outbox."""
        with self._tx() as cur:
            cur.executemany(
                "UPDATE outbox SET ehr_queued = 1 WHERE item_id = ?", [(i,) for i in item_ids]
            )

    # ------------------------------------------------------------ AI switches
    def ai_switches(self) -> AiSwitches:
        """Return the current runtime AI switches."""
        rows = self._read("SELECT scope, key, enabled FROM ai_switches")
        studies = frozenset(r[1] for r in rows if r[0] == "study" and not r[2])
        modalities = {r[1]: bool(r[2]) for r in rows if r[0] == "modality"}
        return AiSwitches(studies, modalities)

    def set_ai_switch(
        self, scope: str, key: str, enabled: bool, reason: str, actor: str, now: float
    ) -> None:
        """Switch AI on or off for a study or modality (takes effect at the next decision).

        Raises:
            ValueError: ``scope`` is not ``study`` or ``modality``.
        """
        if scope not in ("study", "modality"):
            raise ValueError(f"scope: got {scope!r}; expected 'study' or 'modality'")
        key = key.upper() if scope == "modality" else key
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO ai_switches (scope, key, enabled, reason, actor, at)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT (scope, key) DO UPDATE SET"
                " enabled = excluded.enabled, reason = excluded.reason, actor = excluded.actor,"
                " at = excluded.at",
                (scope, key, int(enabled), reason, actor, now),
            )
            detail = {"scope": scope, "key": key, "enabled": enabled, "reason": reason}
            study = key if scope == "study" else ""
            event = AuditEvent(AuditEventType.AI_SWITCH_CHANGED, actor, study, detail=detail)
            self._append_audit(cur, [event], now)

    # ---------------------------------------------------------------- health
    def heartbeat(
        self,
        stage: str,
        pid: int,
        now: float,
        *,
        processed: int,
        failures: int,
        in_flight: int,
        last_error: str,
        status: str = "ok",
    ) -> None:
        """Record that a stage is alive and what it has done."""
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO stage_health (stage, pid, heartbeat_at, processed, failures,"
                " in_flight, last_error, status) VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT (stage) DO UPDATE SET pid = excluded.pid,"
                " heartbeat_at = excluded.heartbeat_at, processed = excluded.processed,"
                " failures = excluded.failures, in_flight = excluded.in_flight,"
                " last_error = excluded.last_error, status = excluded.status",
                (stage, pid, now, processed, failures, in_flight, last_error[:500], status),
            )

    def stage_health(self) -> list[dict[str, Any]]:
        """Return the last heartbeat of every stage."""
        return [dict(r) for r in self._read("SELECT * FROM stage_health ORDER BY stage")]

    # ---------------------------------------------------------------- status
    def status(self, now: float) -> dict[str, Any]:
        """Summarise the ledger: jobs per state, instances per terminal state, queue depth."""
        jobs = {r[0]: r[1] for r in self._read("SELECT state, COUNT(*) FROM jobs GROUP BY state")}
        rows = self._read(
            "SELECT i.override, j.state, COUNT(*) FROM instances i LEFT JOIN jobs j"
            " ON j.job_id = i.job_id GROUP BY i.override, j.state"
        )
        per_instance: dict[str, int] = {s.value: 0 for s in InstanceState}
        for override, state, count in rows:
            key = instance_state(JobState(state or "receiving"), override).value
            per_instance[key] += count
        working = [s.value for s in JobState if not s.is_terminal]
        marks = ",".join("?" * len(working))
        oldest = self._read(
            f"SELECT job_id, study_uid, state, created_at, reason FROM jobs"
            f" WHERE state IN ({marks}) ORDER BY created_at LIMIT 1",
            working,
        )
        waiting = None
        if oldest:
            r = oldest[0]
            waiting = {
                "job_id": r[0],
                "study_uid": r[1],
                "state": r[2],
                "age_s": round(now - r[3], 3),
                "reason": r[4],
            }
        pending = self._read("SELECT COUNT(*) FROM outbox WHERE state = 'pending'")[0][0]
        quarantine = {r[0]: r[1] for r in self._read(
            "SELECT state, COUNT(*) FROM quarantine GROUP BY state")}
        held_codes: dict[str, int] = {}
        for (codes,) in self._read("SELECT codes FROM quarantine WHERE state = 'held'"):
            for code in json.loads(codes or "[]"):
                held_codes[code] = held_codes.get(code, 0) + 1
        flags = self._read("SELECT COUNT(*) FROM review_flags WHERE resolved = 0")[0][0]
        return {
            "review_flags_open": flags,
            "jobs": {s.value: jobs.get(s.value, 0) for s in JobState},
            "instances": per_instance,
            "queue_depth": sum(jobs.get(s, 0) for s in working),
            "oldest_waiting": waiting,
            "outbox_pending": pending,
            "quarantine": {
                "held": quarantine.get("held", 0),
                "released": quarantine.get("released", 0),
                "discarded": quarantine.get("discarded", 0),
                "held_by_code": dict(sorted(held_codes.items())),
            },
            "stages": self.stage_health(),
        }

    def instance_states(self, study_uid: str | None = None) -> dict[str, str]:
        """Return ``{sop_instance_uid: user-visible state}``."""
        where, args = ("WHERE i.study_uid = ?", [study_uid]) if study_uid else ("", [])
        rows = self._read(
            f"SELECT i.sop_instance_uid, i.override, j.state FROM instances i"
            f" LEFT JOIN jobs j ON j.job_id = i.job_id {where}",
            args,
        )
        return {
            r[0]: instance_state(JobState(r[2] or "receiving"), r[1]).value for r in rows
        }


def _prior_retrieval_of(cur: sqlite3.Cursor, series_uid: str) -> str:
    """The study a series was retrieved for as a prior, or ``""``."""
    row = cur.execute(
        "SELECT for_study_uid FROM prior_retrievals WHERE series_uid = ?", (series_uid,)
    ).fetchone()
    return str(row[0]) if row else ""


def _result_row(job: Job, r: dict[str, Any], now: float) -> tuple[str, Sequence[Any]]:
    return (
        "INSERT OR IGNORE INTO sr_results (sop_instance_uid, sop_class_uid, series_uid,"
        " study_uid, job_id, job_version, family, model_name, model_version, predecessor_uid,"
        " prediction, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            r["sop_instance_uid"],
            r["sop_class_uid"],
            r["series_instance_uid"],
            job.study_instance_uid,
            job.job_id,
            job.version,
            r["family"],
            r["model_name"],
            r["model_version"],
            r.get("predecessor_uid", ""),
            json.dumps(r.get("prediction", {}), default=str),
            now,
        ),
    )


def _duplicate_event(meta: InstanceMeta, old_sha: str, actor: str) -> AuditEvent:
    return AuditEvent(
        AuditEventType.INSTANCE_DUPLICATE,
        actor,
        meta.study_instance_uid,
        meta.sop_instance_uid,
        detail={"same_bytes": old_sha == meta.sha256, "calling_ae": meta.calling_ae},
    )


def _job(row: sqlite3.Row) -> Job:
    return Job(
        job_id=int(row["job_id"]),
        study_instance_uid=row["study_uid"],
        version=int(row["version"]),
        state=JobState(row["state"]),
        priority=int(row["priority"]),
        attempts=int(row["attempts"]),
        not_before=float(row["not_before"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        last_instance_at=float(row["last_instance_at"]),
        reason=row["reason"],
        lease_owner=row["lease_owner"],
        leased_until=float(row["leased_until"]),
        data=json.loads(row["data"]),
    )


def _instance(row: sqlite3.Row) -> InstanceMeta:
    return InstanceMeta(
        sop_instance_uid=row["sop_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        study_instance_uid=row["study_uid"],
        series_instance_uid=row["series_uid"],
        modality=row["modality"],
        transfer_syntax_uid=row["transfer_syntax"],
        path=row["path"],
        sha256=row["sha256"],
        size=int(row["size"]),
        received_at=float(row["received_at"]),
        calling_ae=row["calling_ae"],
        body_part=row["body_part"],
        series_description=row["series_description"],
        patient_key=row["patient_key"],
        accession_key=row["accession_key"] if "accession_key" in row.keys() else "",
    )
