"""The status report: jobs per state, instances per user-visible state, queues, quarantine."""

from __future__ import annotations

import json

from core.ledger import instance_state
from core.status import LedgerGauges, LedgerStatus, QuarantineCounts, WaitingJob
from core.types import InstanceState, JobState
from state.db import Database, Tx, marks
from state.ledger.controls import Controls

__all__ = ["Status"]


def _instances(tx: Tx) -> dict[str, int]:
    rows = tx.all(
        "SELECT i.override, j.state, COUNT(*) AS n FROM instances i LEFT JOIN jobs j"
        " ON j.job_id = i.job_id GROUP BY i.override, j.state"
    )
    out = {s.value: 0 for s in InstanceState}
    for r in rows:
        out[instance_state(JobState(r["state"] or "receiving"), r["override"]).value] += int(r["n"])
    return out


def _oldest(tx: Tx, now: float) -> WaitingJob | None:
    working = [s.value for s in JobState if not s.is_terminal]
    row = tx.one(
        f"SELECT job_id, study_uid, state, created_at, reason FROM jobs WHERE state IN"
        f" ({marks(len(working))}) ORDER BY created_at LIMIT 1",
        working,
    )
    if row is None:
        return None
    return WaitingJob(
        int(row["job_id"]), row["study_uid"], row["state"], round(now - float(row["created_at"]), 3), row["reason"]
    )


def _quarantine(tx: Tx) -> QuarantineCounts:
    per_state = {r["state"]: int(r["n"]) for r in tx.all("SELECT state, COUNT(*) AS n FROM quarantine GROUP BY state")}
    by_code: dict[str, int] = {}
    for r in tx.all("SELECT codes FROM quarantine WHERE state = 'held'"):
        for code in json.loads(r["codes"] or "[]"):
            by_code[code] = by_code.get(code, 0) + 1
    return QuarantineCounts(
        per_state.get("held", 0),
        per_state.get("released", 0),
        per_state.get("discarded", 0),
        dict(sorted(by_code.items())),
    )


class Status:
    """Builds ``pacsai status``."""

    def __init__(self, db: Database, controls: Controls) -> None:
        self._db = db
        self._controls = controls

    def report(self, now: float) -> LedgerStatus:
        """The whole report, read in one pass."""
        with self._db.read() as tx:
            jobs = {r["state"]: int(r["n"]) for r in tx.all("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}
            instances = _instances(tx)
            oldest = _oldest(tx, now)
            pending = tx.one("SELECT COUNT(*) AS n FROM outbox WHERE state = 'pending'")
            flags = {
                r["kind"]: int(r["n"])
                for r in tx.all("SELECT kind, COUNT(*) AS n FROM review_flags WHERE resolved = 0 GROUP BY kind")
            }
            held = tx.one("SELECT COUNT(*) AS n FROM sr_results WHERE state = 'held'")
            senders = {
                r["calling_ae"]: int(r["strictness"])
                for r in tx.all("SELECT calling_ae, strictness FROM sender_standings WHERE strictness > 0")
            }
            quarantine = _quarantine(tx)
        working = [s.value for s in JobState if not s.is_terminal]
        return LedgerStatus(
            jobs={s.value: jobs.get(s.value, 0) for s in JobState},
            instances=instances,
            queue_depth=sum(jobs.get(s, 0) for s in working),
            oldest_waiting=oldest,
            outbox_pending=int(pending["n"]) if pending else 0,
            quarantine=quarantine,
            review_flags_open=sum(flags.values()),
            stages=self._controls.stages(),
            review_flags_by_kind=dict(sorted(flags.items())),
            sr_versions_held=int(held["n"]) if held else 0,
            senders_tightened=dict(sorted(senders.items())),
        )

    def gauges(self, now: float) -> LedgerGauges:
        """Jobs per state, each working state's queue and its oldest wait, the outbox backlog
        and held quarantine codes: what the metrics publish every few seconds."""
        working = [s.value for s in JobState if not s.is_terminal]
        with self._db.read() as tx:
            jobs = {r["state"]: int(r["n"]) for r in tx.all("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}
            rows = tx.all(
                f"SELECT state, COUNT(*) AS n, MIN(updated_at) AS since FROM jobs WHERE state IN"
                f" ({marks(len(working))}) AND not_before <= ? AND (lease_owner = '' OR leased_until < ?)"
                " GROUP BY state",
                [*working, now, now],
            )
            pending = tx.one("SELECT COUNT(*) AS n FROM outbox WHERE state = 'pending'")
            quarantine = _quarantine(tx)
        found = {r["state"]: (int(r["n"]), float(r["since"])) for r in rows}
        return LedgerGauges(
            jobs={s.value: jobs.get(s.value, 0) for s in JobState},
            waiting={s: found.get(s, (0, now))[0] for s in working},
            oldest_waiting_s={s: round(max(0.0, now - found.get(s, (0, now))[1]), 3) for s in working},
            outbox_pending=int(pending["n"]) if pending else 0,
            quarantine_held=dict(quarantine.held_by_code),
        )
