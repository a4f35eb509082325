"""Intake: received instances, the receiving job of their study, and what a job covers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from core.audit import AuditEvent
from core.completeness import ReceivingStudy
from core.ledger import Override, RecordResult, SetAside, instance_state
from core.types import AuditEventType, InstanceMeta, InstanceState, JobState
from state.db import Database, Tx, chunks, marks
from state.ledger._rows import INSTANCE_COLUMNS, instance_columns, instance_of
from state.ledger.audit import append_events

__all__ = ["Arrival", "Intake", "apply_cover_study", "apply_set_aside", "reopen_study"]

_OURS = "SELECT 1 AS x FROM outbox WHERE sop_instance_uid = ?"
_KNOWN = f"SELECT 1 AS x FROM instances WHERE sop_instance_uid = ? UNION ALL {_OURS}"
_INSERT = f"INSERT INTO instances ({INSTANCE_COLUMNS}, job_id, cell) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"


def _values(meta: InstanceMeta, job_id: int | None, cell: str) -> tuple[Any, ...]:
    return (
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
        meta.accession_key,
        job_id,
        cell,
    )


def _receiving_job(tx: Tx, meta: InstanceMeta, now: float, complete_at: float, channel: str, cell: str) -> int:
    """The study's receiving job (its quiet timer restarted), or a new version of it in ``cell``.

    A study whose receiving job belongs to another cell (its first instance came to another
    ingress node) keeps that job: the instance joins it and is fetched to that cell's spool
    when the job completes (``Intake.rehome``)."""
    row = tx.one(
        "SELECT job_id FROM jobs WHERE study_uid = ? AND state = ? ORDER BY version DESC LIMIT 1" + tx.for_update,
        (meta.study_instance_uid, JobState.RECEIVING.value),
    )
    if row is not None:
        tx.execute(
            "UPDATE jobs SET last_instance_at = ?, not_before = ?, updated_at = ? WHERE job_id = ?",
            (meta.received_at, complete_at, now, row["job_id"]),
        )
        return int(row["job_id"])
    created = tx.one(
        "INSERT INTO jobs (study_uid, version, state, not_before, created_at, updated_at,"
        " last_instance_at, cell) SELECT ?, COALESCE(MAX(version), 0) + 1, ?, ?, ?, ?, ?, ?"
        " FROM jobs WHERE study_uid = ? RETURNING job_id",
        (
            meta.study_instance_uid,
            JobState.RECEIVING.value,
            complete_at,
            now,
            now,
            meta.received_at,
            cell,
            meta.study_instance_uid,
        ),
    )
    assert created is not None
    tx.notify(channel, "")
    return int(created["job_id"])


def apply_set_aside(tx: Tx, job_id: int, effect: SetAside) -> None:
    """Mark instances set aside (quarantined, skipped) with their reasons."""
    tx.executemany(
        "UPDATE instances SET override = ?, reason = ? WHERE sop_instance_uid = ?",
        [(effect.override.value, why[:2000], uid) for uid, why in effect.reasons],
    )


def apply_cover_study(tx: Tx, job_id: int, study_uid: str) -> None:
    """Make a completing job cover every instance of its study that is not discarded."""
    kept = "COALESCE(override, '') != 'discarded'"
    tx.execute(
        "INSERT INTO job_instances (job_id, sop_instance_uid) SELECT ?, sop_instance_uid"
        f" FROM instances WHERE study_uid = ? AND {kept} ON CONFLICT DO NOTHING",
        (job_id, study_uid),
    )
    tx.execute(f"UPDATE instances SET job_id = ? WHERE study_uid = ? AND {kept}", (job_id, study_uid))
    tx.execute(
        "UPDATE instances SET override = NULL, reason = '' WHERE study_uid = ?"
        " AND override IN ('quarantined', 'skipped')",
        (study_uid,),
    )


def _held(tx: Tx, uids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{uid: (sha256, origin)}`` of these that are held: recorded (origin ``''``), or one of
    our own results (origin ``own_result``: a PACS routing rule forwards our SRs back)."""
    found: dict[str, tuple[str, str]] = {}
    for part in chunks(list(dict.fromkeys(uids))):
        args = marks(len(part))
        rows = tx.all(
            f"SELECT sop_instance_uid, sha256, '' AS origin FROM instances WHERE sop_instance_uid IN ({args})"
            " UNION ALL SELECT sop_instance_uid, '' AS sha256, 'own_result' AS origin FROM outbox"
            f" WHERE sop_instance_uid IN ({args})",
            [*part, *part],
        )
        for r in sorted(rows, key=lambda r: r["origin"]):  # a recorded instance wins over our own
            found.setdefault(r["sop_instance_uid"], (str(r["sha256"]), str(r["origin"])))
    return found


def _priors(tx: Tx, series_uids: Sequence[str]) -> dict[str, str]:
    """``{series_uid: for_study_uid}`` of these series that we asked the PACS for as priors."""
    found: dict[str, str] = {}
    for part in chunks(list(dict.fromkeys(series_uids))):
        rows = tx.all(
            f"SELECT series_uid, for_study_uid FROM prior_retrievals WHERE series_uid IN ({marks(len(part))})", part
        )
        found |= {r["series_uid"]: str(r["for_study_uid"]) for r in rows}
    return found


def _prior_reason(priors: dict[str, str], arrival: Arrival) -> str:
    return f"retrieved as a prior for study {priors[arrival.meta.series_instance_uid]}; not reported"


def _event(arrival: Arrival, old: tuple[str, str] | None, priors: dict[str, str], job_id: int | None) -> AuditEvent:
    """``instance_received`` of a new instance, or ``instance_duplicate`` of a copy of ``old``."""
    meta = arrival.meta
    detail: dict[str, Any] = {"calling_ae": meta.calling_ae}
    if old is not None:
        sha, origin = old
        detail |= {"origin": origin} if origin else {}
        detail["same_bytes"] = sha == meta.sha256
        return AuditEvent(
            AuditEventType.INSTANCE_DUPLICATE,
            arrival.actor,
            meta.study_instance_uid,
            meta.sop_instance_uid,
            detail=detail,
        )
    detail |= {"sha256": meta.sha256, "transfer_syntax": meta.transfer_syntax_uid, "patient_key": meta.patient_key}
    if meta.series_instance_uid in priors:
        detail["origin"] = "prior_retrieval"
    return AuditEvent(
        AuditEventType.INSTANCE_RECEIVED, arrival.actor, meta.study_instance_uid, meta.sop_instance_uid, job_id, detail
    )


@dataclass(frozen=True, slots=True)
class Arrival:
    """One durable instance to record (``Intake.record_many``)."""

    meta: InstanceMeta
    now: float
    """When it was received (the audit event's time)."""
    complete_at: float
    """When its study's quiet period ends if nothing else arrives."""
    actor: str
    """Who received it, for the audit."""


class Intake:
    """Instances as received, and the study jobs they open."""

    def __init__(self, db: Database, cell: str = "") -> None:
        self._db = db
        self._cell = cell
        self._channel = db.channel(f"jobs_{JobState.RECEIVING.value}")

    def has_instance(self, sop_instance_uid: str) -> bool:
        """Whether this SOP Instance UID was already recorded, or is one of our own results
        (a PACS routing rule forwards our SRs and maps back to us)."""
        with self._db.read() as tx:
            return tx.one(_KNOWN, (sop_instance_uid, sop_instance_uid)) is not None

    def record(self, meta: InstanceMeta, now: float, complete_at: float, actor: str) -> RecordResult:
        """Record a durable instance and attach it to its study's receiving job.

        A new job (the next version) opens when the study has no job still receiving, e.g.
        for an instance that arrives after the study's result. A series we asked the PACS to
        send as a prior is kept and set aside: it starts no job.

        Returns:
            ``NEW``, or ``DUPLICATE`` for a SOP Instance UID already held (audited).
        """
        return self.record_many([Arrival(meta, now, complete_at, actor)])[0]

    def record_many(
        self,
        arrivals: Sequence[Arrival],
        before_commit: Callable[[], object] | None = None,
        place: Callable[[set[str]], set[str]] | None = None,
    ) -> list[RecordResult]:
        """Record durable instances in one transaction (one commit for the listener's group).

        Each is recorded as ``record`` would, in order: an instance already held, or a second
        arrival of one SOP Instance UID in the same call, is a ``DUPLICATE`` (audited). The
        instances of one study look their receiving job up once; its last arrival restarts
        the study's quiet timer, as it would have done last. The audit events are appended
        together, at the time of the latest arrival (each instance's own time is its row's
        ``received_at``).

        Args:
            arrivals: The instances, in the order they arrived.
            before_commit: Called inside the transaction after its last statement, before the
                commit (the listener waits there for its directory fsyncs, which ran meanwhile);
                if it raises, nothing is committed.
            place: Called inside the transaction first, with the SOP Instance UIDs of
                ``arrivals`` that are held already (the listener moves the others' files into
                the spool then, with no read of its own before); returns the UIDs whose files
                could not be placed: those arrivals are not recorded. A transaction that is
                run again (PostgreSQL: a deadlock or an insert race) calls it again: it must
                give the same answer without placing twice.

        Returns:
            One result per arrival recorded, in order (every arrival without ``place``).
        """
        if not arrivals:
            return []

        def transaction(tx: Tx) -> list[RecordResult]:
            held = _held(tx, [a.meta.sop_instance_uid for a in arrivals])
            recorded = arrivals
            if place is not None:
                failed = place(set(held))
                recorded = [a for a in arrivals if a.meta.sop_instance_uid not in failed]
            results = self._record_many(tx, recorded, dict(held)) if recorded else []
            if before_commit is not None:
                before_commit()
            return results

        return self._db.run(transaction)

    def _record_many(self, tx: Tx, arrivals: Sequence[Arrival], held: dict[str, tuple[str, str]]) -> list[RecordResult]:
        """``held``: ``_held`` of the arrivals, read in this transaction (updated here)."""
        priors = _priors(tx, [a.meta.series_instance_uid for a in arrivals])
        fresh: list[Arrival] = []
        olds: list[tuple[str, str] | None] = []  # per arrival: what a duplicate duplicates
        for a in arrivals:
            olds.append(held.get(a.meta.sop_instance_uid))
            if olds[-1] is None:
                held[a.meta.sop_instance_uid] = (a.meta.sha256, "")  # a later copy in this call repeats it
                fresh.append(a)
        last = {a.meta.study_instance_uid: a for a in fresh if a.meta.series_instance_uid not in priors}
        jobs = {s: _receiving_job(tx, a.meta, a.now, a.complete_at, self._channel, self._cell) for s, a in last.items()}
        job_ids = [None if a.meta.series_instance_uid in priors else jobs[a.meta.study_instance_uid] for a in fresh]
        tx.executemany(_INSERT, [_values(a.meta, j, self._cell) for a, j in zip(fresh, job_ids, strict=True)])
        if aside := [a for a in fresh if a.meta.series_instance_uid in priors]:
            tx.executemany(
                "UPDATE instances SET override = ?, reason = ? WHERE sop_instance_uid = ?",
                [(Override.SKIPPED.value, _prior_reason(priors, a), a.meta.sop_instance_uid) for a in aside],
            )
        job_of = {id(a): j for a, j in zip(fresh, job_ids, strict=True)}
        events = [_event(a, old, priors, job_of.get(id(a))) for a, old in zip(arrivals, olds, strict=True)]
        append_events(tx, events, max(a.now for a in arrivals))  # one append: the group's time
        return [RecordResult.NEW if old is None else RecordResult.DUPLICATE for old in olds]

    def expect_prior_series(self, series_uid: str, study_uid: str, for_study_uid: str, job_id: int, now: float) -> None:
        """Record, before asking the PACS to send it, that a series comes as a prior."""
        self._db.run(
            lambda tx: tx.execute(
                "INSERT INTO prior_retrievals (series_uid, study_uid, for_study_uid, job_id,"
                " requested_at) VALUES (?,?,?,?,?) ON CONFLICT (series_uid) DO UPDATE SET"
                " for_study_uid = excluded.for_study_uid, job_id = excluded.job_id,"
                " requested_at = excluded.requested_at",
                (series_uid, study_uid, for_study_uid, job_id, now),
            )
        )

    # ------------------------------------------------------------------ reads
    def job_instances(self, job_id: int, *, include_set_aside: bool = True) -> list[InstanceMeta]:
        """The instances a job covers, in arrival order (optionally only those not set aside)."""
        where = "" if include_set_aside else " AND i.override IS NULL"
        with self._db.read() as tx:
            rows = tx.all(
                f"SELECT {instance_columns('i')} FROM instances i JOIN job_instances ji"
                " ON ji.sop_instance_uid = i.sop_instance_uid WHERE ji.job_id = ?"
                f"{where} ORDER BY i.received_at, i.sop_instance_uid",
                (job_id,),
            )
        return [instance_of(r) for r in rows]

    def overrides(self, job_id: int) -> dict[str, Override]:
        """``{sop_instance_uid: override}`` of the job's instances that are set aside."""
        with self._db.read() as tx:
            rows = tx.all(
                "SELECT i.sop_instance_uid, i.override FROM instances i JOIN job_instances ji"
                " ON ji.sop_instance_uid = i.sop_instance_uid"
                " WHERE ji.job_id = ? AND i.override IS NOT NULL",
                (job_id,),
            )
        return {r["sop_instance_uid"]: Override(r["override"]) for r in rows}

    def series_instances(self, series_uid: str) -> list[InstanceMeta]:
        """Instances of a series that we hold (e.g. a retrieved prior), in arrival order."""
        with self._db.read() as tx:
            rows = tx.all(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE series_uid = ? ORDER BY received_at, sop_instance_uid",
                (series_uid,),
            )
        return [instance_of(r) for r in rows]

    def instances(self, sop_instance_uids: Iterable[str]) -> list[InstanceMeta]:
        """The instances with these SOP Instance UIDs that we hold, in the order asked."""
        uids = list(sop_instance_uids)
        found: dict[str, InstanceMeta] = {}
        with self._db.read() as tx:
            for part in chunks(uids):
                rows = tx.all(
                    f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE sop_instance_uid IN ({marks(len(part))})", part
                )
                found |= {r["sop_instance_uid"]: instance_of(r) for r in rows}
        return [found[u] for u in uids if u in found]

    def states(self, study_uid: str | None = None) -> dict[str, InstanceState]:
        """``{sop_instance_uid: user-visible state}``, optionally of one study."""
        where, args = ("WHERE i.study_uid = ?", [study_uid]) if study_uid else ("", [])
        with self._db.read() as tx:
            rows = tx.all(
                "SELECT i.sop_instance_uid, i.override, j.state FROM instances i"
                f" LEFT JOIN jobs j ON j.job_id = i.job_id {where}",
                args,
            )
        return {r["sop_instance_uid"]: instance_state(JobState(r["state"] or "receiving"), r["override"]) for r in rows}

    def receiving_studies(self, now: float, job_id: int | None = None) -> list[ReceivingStudy]:
        """Receiving jobs nobody leases now (or one given job), with what we hold per series,
        their modalities and the sender and accession key of the latest instance."""
        where, args = ("j.job_id = ?", [job_id]) if job_id is not None else ("j.leased_until <= ?", [now])
        if self._cell:
            where, args = f"{where} AND j.cell = ?", [*args, self._cell]
        with self._db.read() as tx:
            rows = tx.all(
                "SELECT j.job_id, j.study_uid, j.version, j.created_at, j.last_instance_at,"
                " i.series_uid, COUNT(*) AS n, MAX(i.modality) AS modality,"
                " (SELECT l.calling_ae FROM instances l WHERE l.study_uid = j.study_uid"
                "  ORDER BY l.received_at DESC LIMIT 1) AS ae,"
                " (SELECT l.accession_key FROM instances l WHERE l.study_uid = j.study_uid"
                "  ORDER BY l.received_at DESC LIMIT 1) AS accession_key"
                " FROM jobs j JOIN instances i ON i.study_uid = j.study_uid"
                f" WHERE j.state = ? AND {where} AND COALESCE(i.override, '') != 'discarded'"
                " GROUP BY j.job_id, j.study_uid, j.version, j.created_at, j.last_instance_at,"
                " i.series_uid ORDER BY j.job_id",
                [JobState.RECEIVING.value, *args],
            )
        out: dict[int, ReceivingStudy] = {}
        for r in rows:
            jid = int(r["job_id"])
            study = out.get(jid) or ReceivingStudy(
                jid,
                r["study_uid"],
                r["ae"] or "",
                float(r["last_instance_at"]),
                {},
                (),
                frozenset(),
                int(r["version"]),
                float(r["created_at"]),
                r["accession_key"] or "",
            )
            modalities = tuple(sorted({*study.modalities, *([r["modality"]] if r["modality"] else [])}))
            out[jid] = replace(study, received={**study.received, r["series_uid"]: int(r["n"])}, modalities=modalities)
        return list(out.values())

    def held_uids(self, study_uids: Iterable[str]) -> dict[str, frozenset[str]]:
        """SOP Instance UIDs we hold (not discarded) per study, for MPPS and IAN evidence."""
        uids = sorted(set(study_uids))
        found: dict[str, set[str]] = {u: set() for u in uids}
        with self._db.read() as tx:
            for part in chunks(uids):
                rows = tx.all(
                    "SELECT study_uid, sop_instance_uid FROM instances WHERE study_uid IN"
                    f" ({marks(len(part))}) AND COALESCE(override, '') != 'discarded'",
                    part,
                )
                for r in rows:
                    found[r["study_uid"]].add(r["sop_instance_uid"])
        return {k: frozenset(v) for k, v in found.items()}

    def foreign_instances(self, job_id: int) -> dict[str, list[InstanceMeta]]:
        """Instances a job covers (not discarded) whose files are in another cell's spool, by
        cell (a sender's associations spread over several ingress nodes)."""
        with self._db.read() as tx:
            rows = tx.all(
                f"SELECT {instance_columns('i')}, i.cell FROM instances i JOIN job_instances ji"
                " ON ji.sop_instance_uid = i.sop_instance_uid WHERE ji.job_id = ? AND i.cell != ?"
                " AND COALESCE(i.override, '') != 'discarded' ORDER BY i.received_at, i.sop_instance_uid",
                (job_id, self._cell),
            )
        out: dict[str, list[InstanceMeta]] = {}
        for r in rows:
            out.setdefault(r["cell"], []).append(instance_of(r))
        return out

    def rehome(self, moved: Iterable[tuple[str, str]]) -> None:
        """Record that instances ``(sop_instance_uid, path)`` now live in this cell's spool."""
        rows = [(path, self._cell, uid) for uid, path in moved]
        if rows:
            self._db.run(
                lambda tx: tx.executemany("UPDATE instances SET path = ?, cell = ? WHERE sop_instance_uid = ?", rows)
            )

    def receiving_instances(self) -> list[InstanceMeta]:
        """Instances of studies whose latest job is still receiving (pre-validation)."""
        with self._db.read() as tx:
            rows = tx.all(
                f"SELECT {instance_columns('i')} FROM jobs j JOIN instances i"
                " ON i.study_uid = j.study_uid WHERE j.state = ? AND i.override IS NULL AND i.cell = ?"
                " ORDER BY i.received_at, i.sop_instance_uid",
                (JobState.RECEIVING.value, self._cell),
            )
        return [instance_of(r) for r in rows]


def reopen_study(tx: Tx, study_uid: str, now: float, channel: str) -> int | None:
    """Open the next job version of a study in ``receiving`` unless one is receiving."""
    if tx.one(
        "SELECT 1 AS x FROM jobs WHERE study_uid = ? AND state = ?" + tx.for_update,
        (study_uid, JobState.RECEIVING.value),
    ):
        return None
    row = tx.one(
        "INSERT INTO jobs (study_uid, version, state, not_before, created_at, updated_at,"
        " last_instance_at, cell) SELECT ?, COALESCE(MAX(version), 0) + 1, ?, ?, ?, ?,"
        " (SELECT COALESCE(MAX(received_at), 0) FROM instances WHERE study_uid = ?),"
        " COALESCE((SELECT l.cell FROM jobs l WHERE l.study_uid = ? ORDER BY l.version DESC LIMIT 1), '')"
        " FROM jobs WHERE study_uid = ? RETURNING job_id",
        (study_uid, JobState.RECEIVING.value, now, now, now, study_uid, study_uid, study_uid),
    )
    tx.notify(channel, "")
    return None if row is None else int(row["job_id"])
