"""The quarantine table of the ledger: held instances, operator releases and discards.

The rules are in ``core.quarantine``; this adapter stores them. Every change commits in one
transaction with the audit events that describe it and, for the validator, with the job's state
change. The files themselves are never touched: a quarantined instance stays in the spool
byte-identical to what was sent (its sha256 is in the ledger since receipt).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from actors.adapters.ledger import SqliteLedger
from core.audit import AuditEvent
from core.errors import RejectedInput
from core.quarantine import (
    QuarantineState,
    Verdict,
    format_id,
    issues_json,
    parse_reference,
    require_reason,
)
from core.types import AuditEventType, Job, JobState

__all__ = ["QuarantineLedger"]

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
_REOPEN = (
    "INSERT INTO jobs (study_uid, version, state, not_before, created_at, updated_at,"
    " last_instance_at)"
    " SELECT ?, (SELECT COALESCE(MAX(version), 0) + 1 FROM jobs WHERE study_uid = ?), ?, ?, ?, ?,"
    " (SELECT COALESCE(MAX(received_at), 0) FROM instances WHERE study_uid = ?)"
    " WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE study_uid = ? AND state = ?)"
)


class QuarantineLedger:
    """Quarantine entries in the ledger file of this process."""

    def __init__(self, ledger: SqliteLedger) -> None:
        """Args:
        ledger: The process's ledger connection.
        """
        self._ledger = ledger
        self._adopt_legacy()

    def _adopt_legacy(self) -> None:
        """Give instances quarantined before this table existed an entry (ledger upgrade)."""
        rows = self._ledger.query(
            "SELECT sop_instance_uid, study_uid, series_uid, job_id, reason, received_at"
            " FROM instances WHERE override = 'quarantined' AND sop_instance_uid NOT IN"
            " (SELECT sop_instance_uid FROM quarantine)"
        )
        if not rows:
            return
        with self._ledger.transaction() as cur:
            for r in rows:
                try:
                    reasons = json.loads(r["reason"] or "[]")
                except ValueError:
                    reasons = [{"code": "unreadable", "message": r["reason"][:500]}]
                codes = sorted({str(x.get("code", "")) for x in reasons if isinstance(x, dict)})
                cur.execute(
                    "INSERT OR IGNORE INTO quarantine (sop_instance_uid, study_uid, series_uid,"
                    " job_id, codes, reasons, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                    (r["sop_instance_uid"], r["study_uid"], r["series_uid"], r["job_id"],
                     json.dumps(codes), json.dumps(reasons), r["received_at"], r["received_at"]),
                )

    # ------------------------------------------------------------ validator
    def accepted_codes(self, sop_instance_uids: Iterable[str]) -> dict[str, frozenset[str]]:
        """Return ``{uid: accepted codes}`` of the given instances that an operator released."""
        uids = list(sop_instance_uids)
        found: dict[str, frozenset[str]] = {}
        for start in range(0, len(uids), 500):  # SQLite's bound-parameter limit
            chunk = uids[start : start + 500]
            rows = self._ledger.query(
                f"SELECT sop_instance_uid, accepted_codes FROM quarantine WHERE state = 'released'"
                f" AND sop_instance_uid IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            found |= {r["sop_instance_uid"]: frozenset(json.loads(r["accepted_codes"])) for r in rows}
        return found

    def record(
        self,
        job: Job,
        new_state: JobState,
        now: float,
        verdict: Verdict,
        events: Sequence[AuditEvent],
        reason: str | None,
    ) -> None:
        """Move a validated job on, holding the verdict's instances, in one transaction.

        Raises:
            LeaseLost: The job changed state or owner meanwhile.
        """
        extra: list[tuple[str, Sequence[Any]]] = []
        for uid, issues in verdict.held.items():
            reasons = issues_json(issues)
            codes = json.dumps(sorted({i.code for i in issues}))
            extra.append(("UPDATE instances SET override = 'quarantined', reason = ?"
                          " WHERE sop_instance_uid = ?", (reasons[:20000], uid)))
            extra.append((_UPSERT, (job.job_id, codes, reasons[:20000], now, now, uid)))
        accepted = {uid: json.loads(issues_json(i)) for uid, i in verdict.accepted.items()}
        data = {"accepted_issues": accepted} if accepted else None
        self._ledger.transition(job, new_state, now, events=events, data=data, reason=reason,
                                extra=extra)

    # ------------------------------------------------------------- operators
    def entries(
        self, state: str | None = "held", study_uid: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        """Return quarantine entries, newest first, optionally of one state and one study."""
        where, args = [], []
        if state:
            where.append("state = ?")
            args.append(QuarantineState(state).value)
        if study_uid:
            where.append("study_uid = ?")
            args.append(study_uid)
        sql = _SELECT + (" WHERE " + " AND ".join(f"q.{w}" for w in where) if where else "")
        rows = self._ledger.query(sql + " ORDER BY q.qid DESC LIMIT ?", [*args, limit])
        return [_entry(r) for r in rows]

    def resolve(self, reference: str) -> list[dict[str, Any]]:
        """Return the entries an operator's reference names (Q<n>, or an instance, series or
        study UID).

        Raises:
            RejectedInput: The reference is malformed or names nothing in quarantine.
        """
        ref = parse_reference(reference)
        if ref.qid is not None:
            rows = self._ledger.query(_SELECT + " WHERE q.qid = ?", (ref.qid,))
        else:
            rows = []
            for column in ("sop_instance_uid", "series_uid", "study_uid"):
                rows = self._ledger.query(
                    f"{_SELECT} WHERE q.{column} = ? ORDER BY q.qid", (ref.uid,)
                )
                if rows:
                    break
        if not rows:
            raise RejectedInput(
                f"quarantine ID: got {reference!r}; expected an ID listed by `pacsai quarantine "
                "list --state all`",
                reference,
            )
        return [_entry(r) for r in rows]

    def release(self, reference: str, actor: str, reason: str, now: float) -> list[dict[str, Any]]:
        """Release held instances: accept their codes and open their studies again.

        Returns:
            The released entries.

        Raises:
            RejectedInput: Nothing held is named, or an entry is not held any more.
        """
        reason = require_reason(reason, "release")
        held = self._held(reference, "release")
        with self._ledger.transaction() as cur:
            self._decide(cur, held, QuarantineState.RELEASED, actor, reason, now)
            for uid in sorted({e["study_uid"] for e in held}):
                cur.execute(_REOPEN, (uid, uid, JobState.RECEIVING.value, now, now, now, uid, uid,
                                      JobState.RECEIVING.value))
            events = [_event(AuditEventType.QUARANTINE_RELEASED, e, actor, reason) for e in held]
            self._ledger.append_audit(cur, events, now)
        return self.resolve(reference)

    def discard(self, reference: str, actor: str, reason: str, now: float) -> list[dict[str, Any]]:
        """Discard held instances: no job will include them; their files stay, marked.

        Returns:
            The discarded entries.

        Raises:
            RejectedInput: Nothing held is named, or an entry is not held any more.
        """
        reason = require_reason(reason, "discard")
        held = self._held(reference, "discard")
        with self._ledger.transaction() as cur:
            self._decide(cur, held, QuarantineState.DISCARDED, actor, reason, now)
            cur.executemany(
                "UPDATE instances SET override = 'discarded' WHERE sop_instance_uid = ?",
                [(e["sop_instance_uid"],) for e in held],
            )
            events = [_event(AuditEventType.QUARANTINE_DISCARDED, e, actor, reason) for e in held]
            self._ledger.append_audit(cur, events, now)
        return self.resolve(reference)

    def _held(self, reference: str, action: str) -> list[dict[str, Any]]:
        entries = self.resolve(reference)
        held = [e for e in entries if e["state"] == QuarantineState.HELD.value]
        if not held:
            states = sorted({e["state"] for e in entries})
            raise RejectedInput(
                f"{reference}: got state {', '.join(states)}; expected a held (quarantined) "
                f"instance to {action}",
                reference,
            )
        return held

    @staticmethod
    def _decide(cur: sqlite3.Cursor, held: list[dict[str, Any]], state: QuarantineState,
                actor: str, reason: str, now: float) -> None:
        accept = "codes" if state is QuarantineState.RELEASED else "accepted_codes"
        for entry in held:
            cur.execute(
                f"UPDATE quarantine SET state = ?, accepted_codes = {accept}, decided_by = ?,"
                " decided_at = ?, decision_reason = ?, updated_at = ? WHERE qid = ? AND state = ?",
                (state.value, actor, now, reason, now, entry["qid"], QuarantineState.HELD.value),
            )
            if cur.rowcount != 1:  # another operator decided meanwhile: roll everything back
                raise RejectedInput(f"{entry['id']}: changed meanwhile; expected it held", entry["id"])


def _entry(row: Mapping[str, Any]) -> dict[str, Any]:
    entry = dict(row)
    entry["id"] = format_id(int(row["qid"]))
    for key in ("codes", "reasons", "accepted_codes"):
        entry[key] = json.loads(row[key] or "[]")
    return entry


def _event(kind: AuditEventType, entry: Mapping[str, Any], actor: str, reason: str) -> AuditEvent:
    return AuditEvent(
        kind,
        actor,
        entry["study_uid"],
        entry["sop_instance_uid"],
        entry["job_id"],
        {"quarantine_id": entry["id"], "codes": entry["codes"], "reason": reason},
    )
