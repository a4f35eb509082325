"""The quarantine table: held instances, operator releases and discards (rules: core.quarantine).

Every change commits in one transaction with the audit events that describe it and, for the
validator, with the job's state change (the ``HoldInQuarantine`` effect). The files themselves
are never touched: a held instance stays in the spool byte-identical to what was sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from core.audit import AuditEvent
from core.errors import RejectedInput
from core.ledger import HoldInQuarantine, Override
from core.quarantine import (
    QuarantineEntry,
    QuarantineState,
    issues_json,
    parse_reference,
    require_reason,
)
from core.types import AuditEventType, JobState, ValidationIssue
from state.db import Database, Row, Tx, chunks, marks
from state.ledger.audit import append_events
from state.ledger.intake import reopen_study

__all__ = ["Quarantine", "apply_hold"]

_UPSERT = (
    "INSERT INTO quarantine (sop_instance_uid, study_uid, series_uid, job_id, state, codes,"
    " reasons, created_at, updated_at)"
    " SELECT sop_instance_uid, study_uid, series_uid, ?, 'held', ?, ?, ?, ? FROM instances"
    " WHERE sop_instance_uid = ?"
    " ON CONFLICT (sop_instance_uid) DO UPDATE SET job_id = excluded.job_id,"
    " codes = excluded.codes, reasons = excluded.reasons, updated_at = excluded.updated_at,"
    " state = CASE WHEN quarantine.state = 'discarded' THEN 'discarded' ELSE 'held' END"
)
_SELECT = (
    "SELECT q.*, i.modality, i.sop_class_uid, i.transfer_syntax, i.path, i.sha256, i.size,"
    " i.calling_ae, i.received_at FROM quarantine q LEFT JOIN instances i"
    " ON i.sop_instance_uid = q.sop_instance_uid"
)


def apply_hold(tx: Tx, job_id: int, effect: HoldInQuarantine, now: float) -> None:
    """Hold an instance: mark it quarantined and (re)open its quarantine entry."""
    reasons = issues_json(effect.issues)[:20000]
    codes = json.dumps(sorted({i.code for i in effect.issues}))
    tx.execute(
        "UPDATE instances SET override = ?, reason = ? WHERE sop_instance_uid = ?",
        (Override.QUARANTINED.value, reasons, effect.sop_instance_uid),
    )
    tx.execute(_UPSERT, (job_id, codes, reasons, now, now, effect.sop_instance_uid))


def _entry(row: Row) -> QuarantineEntry:
    reasons = tuple(
        ValidationIssue(
            str(r.get("code", "")), str(r.get("message", "")), row["sop_instance_uid"], str(r.get("level", "instance"))
        )
        for r in json.loads(row["reasons"] or "[]")
        if isinstance(r, dict)
    )
    return QuarantineEntry(
        qid=int(row["qid"]),
        sop_instance_uid=row["sop_instance_uid"],
        study_uid=row["study_uid"],
        series_uid=row["series_uid"],
        job_id=None if row["job_id"] is None else int(row["job_id"]),
        state=QuarantineState(row["state"]),
        codes=tuple(json.loads(row["codes"] or "[]")),
        reasons=reasons,
        accepted_codes=tuple(json.loads(row["accepted_codes"] or "[]")),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        decided_by=row["decided_by"],
        decided_at=row["decided_at"],
        decision_reason=row["decision_reason"],
        modality=row["modality"] or "",
        sop_class_uid=row["sop_class_uid"] or "",
        transfer_syntax=row["transfer_syntax"] or "",
        path=row["path"] or "",
        sha256=row["sha256"] or "",
        size=int(row["size"] or 0),
        calling_ae=row["calling_ae"] or "",
        received_at=row["received_at"],
    )


def _event(kind: AuditEventType, entry: QuarantineEntry, actor: str, reason: str) -> AuditEvent:
    return AuditEvent(
        kind,
        actor,
        entry.study_uid,
        entry.sop_instance_uid,
        entry.job_id,
        {"quarantine_id": entry.id, "codes": list(entry.codes), "reason": reason},
    )


class Quarantine:
    """Quarantine entries: what the validator held and what operators decided."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._channel = db.channel(f"jobs_{JobState.RECEIVING.value}")

    def accepted_codes(self, sop_instance_uids: Iterable[str]) -> dict[str, frozenset[str]]:
        """``{uid: accepted codes}`` of the given instances that an operator released."""
        uids = list(sop_instance_uids)
        found: dict[str, frozenset[str]] = {}
        with self._db.read() as tx:
            for part in chunks(uids):
                rows = tx.all(
                    "SELECT sop_instance_uid, accepted_codes FROM quarantine"
                    f" WHERE state = 'released' AND sop_instance_uid IN ({marks(len(part))})",
                    part,
                )
                found |= {r["sop_instance_uid"]: frozenset(json.loads(r["accepted_codes"])) for r in rows}
        return found

    def entries(
        self, state: QuarantineState | None = QuarantineState.HELD, study_uid: str | None = None, limit: int = 200
    ) -> list[QuarantineEntry]:
        """Entries, newest first, optionally of one state and one study."""
        where, args = [], []
        if state is not None:
            where, args = ["q.state = ?"], [state.value]
        if study_uid:
            where, args = [*where, "q.study_uid = ?"], [*args, study_uid]
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
        with self._db.read() as tx:
            return [_entry(r) for r in tx.all(sql + " ORDER BY q.qid DESC LIMIT ?", [*args, limit])]

    def resolve(self, reference: str) -> list[QuarantineEntry]:
        """The entries an operator's reference names (``Q<n>``, or an instance, series or
        study UID).

        Raises:
            RejectedInput: The reference is malformed or names nothing in quarantine.
        """
        ref = parse_reference(reference)
        rows: list[Row] = []
        with self._db.read() as tx:
            if ref.qid is not None:
                rows = tx.all(_SELECT + " WHERE q.qid = ?", (ref.qid,))
            else:
                for column in ("sop_instance_uid", "series_uid", "study_uid"):
                    rows = tx.all(f"{_SELECT} WHERE q.{column} = ? ORDER BY q.qid", (ref.uid,))
                    if rows:
                        break
        if not rows:
            raise RejectedInput(
                f"quarantine ID: got {reference!r}; expected an ID listed by `pacsai quarantine list --state all`",
                reference,
            )
        return [_entry(r) for r in rows]

    def release(self, reference: str, actor: str, reason: str, now: float) -> list[QuarantineEntry]:
        """Release held instances: accept their codes and open their studies again.

        Raises:
            RejectedInput: Nothing held is named, or an entry is not held any more.
        """
        reason = require_reason(reason, "release")
        held = self._held(reference, "release")

        def decide(tx: Tx) -> None:
            self._decide(tx, held, QuarantineState.RELEASED, actor, reason, now)
            for uid in sorted({e.study_uid for e in held}):
                reopen_study(tx, uid, now, self._channel)
            append_events(tx, [_event(AuditEventType.QUARANTINE_RELEASED, e, actor, reason) for e in held], now)

        self._db.run(decide)
        return self.resolve(reference)

    def discard(self, reference: str, actor: str, reason: str, now: float) -> list[QuarantineEntry]:
        """Discard held instances: no job will include them; their files stay, marked.

        Raises:
            RejectedInput: Nothing held is named, or an entry is not held any more.
        """
        reason = require_reason(reason, "discard")
        held = self._held(reference, "discard")

        def decide(tx: Tx) -> None:
            self._decide(tx, held, QuarantineState.DISCARDED, actor, reason, now)
            tx.executemany(
                "UPDATE instances SET override = ? WHERE sop_instance_uid = ?",
                [(Override.DISCARDED.value, e.sop_instance_uid) for e in held],
            )
            append_events(tx, [_event(AuditEventType.QUARANTINE_DISCARDED, e, actor, reason) for e in held], now)

        self._db.run(decide)
        return self.resolve(reference)

    def _held(self, reference: str, action: str) -> list[QuarantineEntry]:
        entries = self.resolve(reference)
        held = [e for e in entries if e.state is QuarantineState.HELD]
        if not held:
            states = sorted({e.state.value for e in entries})
            raise RejectedInput(
                f"{reference}: got state {', '.join(states)}; expected a held (quarantined) instance to {action}",
                reference,
            )
        return held

    @staticmethod
    def _decide(
        tx: Tx, held: list[QuarantineEntry], state: QuarantineState, actor: str, reason: str, now: float
    ) -> None:
        accept = "codes" if state is QuarantineState.RELEASED else "accepted_codes"
        for entry in held:
            changed = tx.execute(
                f"UPDATE quarantine SET state = ?, accepted_codes = {accept}, decided_by = ?,"
                " decided_at = ?, decision_reason = ?, updated_at = ? WHERE qid = ? AND state = ?",
                (state.value, actor, now, reason, now, entry.qid, QuarantineState.HELD.value),
            )
            if changed != 1:  # another operator decided meanwhile: roll everything back
                raise RejectedInput(f"{entry.id}: changed meanwhile; expected it held", entry.id)
