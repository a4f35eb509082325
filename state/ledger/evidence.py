"""Completion evidence the bridge is told, and what it learned about each sender.

- MPPS procedure steps (``core.mpps``): ``record_step`` applies an N-CREATE or N-SET to the
  stored step inside one transaction, so two requests for one step never interleave.
- IAN notices (``core.ian``): ``record_notice``.
- Each sender's standing (``core.sources.SenderStanding``) and the one-time judgement of a
  job version opened by instances after an earlier completion (``record_arrival``).

Accepted evidence makes the receiving jobs of the studies it names due at once and wakes the
assembler (PostgreSQL ``NOTIFY``; on SQLite the assembler polls), so a study can complete as
soon as a step is set COMPLETED.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from core.audit import AuditEvent
from core.ian import AvailabilityNotice
from core.ledger import RaiseReviewFlag
from core.mpps import ProcedureStep
from core.review import FlagKind
from core.sources import LateArrival, SenderStanding
from core.types import AuditEventType, JobState
from state.db import Database, Tx, chunks, marks
from state.ledger.audit import append_events
from state.ledger.reviews import apply_flag

__all__ = ["CompletionEvidence"]


def _step_event(step: ProcedureStep, actor: str, created: bool) -> AuditEvent:
    detail = {
        "request": "N-CREATE" if created else "N-SET",
        "status": str(step.status),
        "calling_ae": step.calling_ae,
        "study_uids": list(step.study_uids),
        "series": len(step.series),
        "instances": len(step.expected),
        "discontinued_reason": step.discontinued_reason,
    }
    return AuditEvent(
        AuditEventType.MPPS_RECEIVED,
        actor,
        step.study_uids[0] if step.study_uids else "",
        step.sop_instance_uid,
        detail=detail,
    )


class CompletionEvidence:
    """MPPS steps, IAN notices and sender standings."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._receiving = db.channel(f"jobs_{JobState.RECEIVING.value}")

    def _wake(self, tx: Tx, study_uids: Iterable[str], now: float) -> None:
        """Make the receiving jobs of these studies due now, and wake the assembler."""
        uids = sorted(set(study_uids))
        if uids:
            tx.execute(
                f"UPDATE jobs SET not_before = ? WHERE state = ? AND not_before > ?"
                f" AND study_uid IN ({marks(len(uids))})",
                (now, JobState.RECEIVING.value, now, *uids),
            )
            tx.notify(self._receiving, "")

    # ------------------------------------------------------------------ MPPS
    def record_step(
        self,
        sop_instance_uid: str,
        change: Callable[[ProcedureStep | None], ProcedureStep],
        actor: str,
        now: float,
    ) -> ProcedureStep:
        """Apply an N-CREATE or N-SET to a step and store the result, with its audit event.

        Args:
            sop_instance_uid: The step's SOP Instance UID.
            change: ``core.mpps.create_step`` or ``set_step`` bound to the request; gets the
                stored step (``None``: none) and returns the new one, or raises.
            actor: Who received it (``listener:<AE>``).
            now: When.

        Returns:
            The stored step.

        Raises:
            DimseRefused: ``change`` refused the request; nothing is stored.
        """

        def apply(tx: Tx) -> ProcedureStep:
            row = tx.one(
                "SELECT step FROM procedure_steps WHERE sop_instance_uid = ?" + tx.for_update, (sop_instance_uid,)
            )
            before = ProcedureStep.from_json(json.loads(row["step"])) if row is not None else None
            step = change(before)
            tx.execute(
                "INSERT INTO procedure_steps (sop_instance_uid, status, calling_ae, created_at,"
                " updated_at, step) VALUES (?,?,?,?,?,?) ON CONFLICT (sop_instance_uid) DO UPDATE"
                " SET status = excluded.status, updated_at = excluded.updated_at, step = excluded.step",
                (
                    step.sop_instance_uid,
                    str(step.status),
                    step.calling_ae,
                    step.created_at,
                    step.updated_at,
                    json.dumps(step.to_json(), sort_keys=True),
                ),
            )
            tx.executemany(
                "INSERT INTO procedure_step_studies (step_uid, study_uid) VALUES (?,?) ON CONFLICT DO NOTHING",
                [(step.sop_instance_uid, s) for s in step.study_uids],
            )
            self._wake(tx, step.study_uids, now)
            append_events(tx, [_step_event(step, actor, before is None)], now)
            return step

        return self._db.run(apply)

    def steps_for(self, study_uids: Iterable[str]) -> dict[str, tuple[ProcedureStep, ...]]:
        """The procedure steps naming each study (studies without any are left out)."""
        out: dict[str, list[ProcedureStep]] = {}
        uids = sorted(set(study_uids))
        with self._db.read() as tx:
            for part in chunks(uids):
                rows = tx.all(
                    "SELECT s.study_uid, p.step FROM procedure_step_studies s JOIN"
                    " procedure_steps p ON p.sop_instance_uid = s.step_uid WHERE"
                    f" s.study_uid IN ({marks(len(part))}) ORDER BY p.created_at",
                    part,
                )
                for r in rows:
                    out.setdefault(r["study_uid"], []).append(ProcedureStep.from_json(json.loads(r["step"])))
        return {k: tuple(v) for k, v in out.items()}

    # ------------------------------------------------------------------- IAN
    def record_notice(self, notice: AvailabilityNotice, actor: str, now: float) -> bool:
        """Store an Instance Availability Notification with its audit event.

        Returns:
            ``False`` when a notice with this SOP Instance UID exists (nothing stored).
        """

        def apply(tx: Tx) -> bool:
            added = tx.execute(
                "INSERT INTO availability_notices (sop_instance_uid, study_uid, calling_ae,"
                " received_at, notice) VALUES (?,?,?,?,?) ON CONFLICT (sop_instance_uid) DO NOTHING",
                (
                    notice.sop_instance_uid,
                    notice.study_uid,
                    notice.calling_ae,
                    notice.received_at,
                    json.dumps(notice.to_json(), sort_keys=True),
                ),
            )
            if added != 1:
                return False
            self._wake(tx, [notice.study_uid], now)
            detail = {
                "calling_ae": notice.calling_ae,
                "instances": len(notice.instances),
                "series": len({i.series_uid for i in notice.instances}),
            }
            append_events(
                tx,
                [
                    AuditEvent(
                        AuditEventType.IAN_RECEIVED, actor, notice.study_uid, notice.sop_instance_uid, detail=detail
                    )
                ],
                now,
            )
            return True

        return self._db.run(apply)

    def notices_for(self, study_uids: Iterable[str]) -> dict[str, tuple[AvailabilityNotice, ...]]:
        """The notices of each study, oldest first (studies without any are left out)."""
        out: dict[str, list[AvailabilityNotice]] = {}
        uids = sorted(set(study_uids))
        with self._db.read() as tx:
            for part in chunks(uids):
                rows = tx.all(
                    "SELECT study_uid, notice FROM availability_notices WHERE study_uid IN"
                    f" ({marks(len(part))}) ORDER BY received_at",
                    part,
                )
                for r in rows:
                    out.setdefault(r["study_uid"], []).append(AvailabilityNotice.from_json(json.loads(r["notice"])))
        return {k: tuple(v) for k, v in out.items()}

    # -------------------------------------------------------------- senders
    def standings(self) -> dict[str, SenderStanding]:
        """Every sender's standing that differs from the configured rule's, by AE title."""
        with self._db.read() as tx:
            rows = tx.all("SELECT calling_ae, strictness, early FROM sender_standings ORDER BY calling_ae")
        return {r["calling_ae"]: SenderStanding(r["calling_ae"], int(r["strictness"]), int(r["early"])) for r in rows}

    def arrival_judged(self, job_id: int) -> bool:
        """Whether the late arrival that opened this job version was judged already."""
        with self._db.read() as tx:
            return tx.one("SELECT 1 AS x FROM late_arrivals WHERE job_id = ?", (job_id,)) is not None

    def record_arrival(self, job_id: int, study_uid: str, verdict: LateArrival, actor: str, now: float) -> bool:
        """Store the judgement of a late arrival once, the sender's new standing with it, and,
        when the sender was tightened, a ``sender_tightened`` audit event and review flag.

        Returns:
            ``False`` when this job's arrival was judged already (nothing changes).
        """
        standing = verdict.standing

        def apply(tx: Tx) -> bool:
            added = tx.execute(
                "INSERT INTO late_arrivals (job_id, study_uid, calling_ae, kind, at)"
                " VALUES (?,?,?,?,?) ON CONFLICT (job_id) DO NOTHING",
                (job_id, study_uid, standing.calling_ae, str(verdict.kind), now),
            )
            if added != 1:
                return False
            tx.execute(
                "INSERT INTO sender_standings (calling_ae, strictness, early, updated_at)"
                " VALUES (?,?,?,?) ON CONFLICT (calling_ae) DO UPDATE SET strictness ="
                " excluded.strictness, early = excluded.early, updated_at = excluded.updated_at",
                (standing.calling_ae, standing.strictness, standing.early, now),
            )
            tightened = verdict.tightened
            if tightened is not None:
                detail = tightened.audit_detail()
                apply_flag(
                    tx,
                    job_id,
                    RaiseReviewFlag(
                        FlagKind.SENDER_TIGHTENED, study_uid, "", detail, f"{standing.calling_ae}:{standing.strictness}"
                    ),
                    now,
                )
                append_events(
                    tx,
                    [AuditEvent(AuditEventType.SENDER_TIGHTENED, actor, study_uid, job_id=job_id, detail=detail)],
                    now,
                )
            return True

        return self._db.run(apply)
