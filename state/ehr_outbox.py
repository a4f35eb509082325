"""The EHR outbox: FHIR report Bundles waiting for (or after) delivery to the EHR.

A store of its own (``var/ehr_outbox.sqlite``, or the ``<prefix>_ehr`` schema on PostgreSQL): a
Bundle names the patient, so it is PHI and stays out of the ledger. One row per SR (its SOP
Instance UID is unique), so queueing twice is harmless.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from state.column_seal import ColumnSealer, sealer_of
from state.db import Database, Row, Tx

__all__ = ["EhrOutbox", "EhrReport"]


@dataclass(frozen=True, slots=True)
class EhrReport:
    """One queued report (PHI: its Bundle names the patient)."""

    item_id: int
    sr_uid: str
    job_id: int
    study_uid: str
    priority: int
    bundle: dict[str, Any]
    state: str
    attempts: int
    waits: int
    not_before: float
    last_error: str
    created_at: float
    delivered_at: float | None


def _report(row: Row, seal: ColumnSealer) -> EhrReport:
    return EhrReport(
        int(row["item_id"]),
        row["sr_uid"],
        int(row["job_id"]),
        row["study_uid"],
        int(row["priority"]),
        json.loads(seal.open_text(row["bundle"])),
        row["state"],
        int(row["attempts"]),
        int(row["waits"]),
        float(row["not_before"]),
        seal.open_text(row["last_error"]),
        float(row["created_at"]),
        None if row["delivered_at"] is None else float(row["delivered_at"]),
    )


class EhrOutbox:
    """Durable queue of report Bundles (the EHR delivery actor writes it)."""

    def __init__(self, db: Database, cell: str = "") -> None:
        """Args:
        db: The EHR store (``state.ledger.open_database(..., "ehr")``).
        cell: The ingress cell whose reports this process queues and sends (``''`` on one
            machine): two cells' EHR deliveries never send the same report.
        """
        self._db = db
        self._cell = cell
        self._seal = sealer_of(db)  # the Bundle names the patient: sealed (``state.column_seal``)

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def enabled_since(self, now: float) -> float:
        """When results to the EHR were first switched on (SRs delivered before stay out)."""

        def first(tx: Tx) -> float:
            tx.execute(
                "INSERT INTO ehr_meta (name, value) VALUES ('enabled_at', ?) ON CONFLICT (name) DO NOTHING", (now,)
            )
            row = tx.one("SELECT value FROM ehr_meta WHERE name = 'enabled_at'")
            return float(row["value"]) if row else now

        return self._db.run(first)

    def enqueue(
        self, sr_uid: str, job_id: int, study_uid: str, priority: int, bundle: dict[str, Any], now: float
    ) -> bool:
        """Queue a report durably; ``False`` if this SR's report was queued before."""
        return self._db.run(
            lambda tx: (
                tx.execute(
                    "INSERT INTO ehr_reports (sr_uid, job_id, study_uid, priority, bundle, not_before,"
                    " created_at, cell) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (sr_uid) DO NOTHING",
                    (sr_uid, job_id, study_uid, priority, self._seal.text(json.dumps(bundle)), now, now, self._cell),
                )
                == 1
            )
        )

    def due(self, now: float, limit: int) -> list[EhrReport]:
        """Pending reports whose time has come, highest priority first."""
        with self._db.read() as tx:
            rows = tx.all(
                "SELECT * FROM ehr_reports WHERE state = 'pending' AND not_before <= ? AND cell = ?"
                " ORDER BY priority DESC, item_id LIMIT ?",
                (now, self._cell, limit),
            )
        return [_report(r, self._seal) for r in rows]

    def delivered(self, item_id: int, now: float) -> None:
        """The endpoint accepted the report."""
        self._db.run(
            lambda tx: tx.execute(
                "UPDATE ehr_reports SET state = 'delivered', delivered_at = ?, waits = 0,"
                " last_error = '' WHERE item_id = ?",
                (now, item_id),
            )
        )

    def defer(self, item_id: int, not_before: float, error: str, *, spent: bool, dead: bool = False) -> None:
        """Try again at ``not_before``; ``spent`` counts an attempt, ``dead`` gives up."""
        self._db.run(
            lambda tx: tx.execute(
                "UPDATE ehr_reports SET not_before = ?, last_error = ?, attempts = attempts + ?,"
                " waits = CASE WHEN ? = 1 THEN 0 ELSE waits + 1 END,"
                " state = CASE WHEN ? = 1 THEN 'dead' ELSE state END WHERE item_id = ?",
                (not_before, self._seal.text(error[:1000]), int(spent), int(spent), int(dead), item_id),
            )
        )

    def replay(self, item_ids: Sequence[int], now: float) -> list[EhrReport]:
        """Put these dead reports back: pending, due now, a fresh retry budget (attempts and
        waits 0; the last error stays until the next try). Reports that are not dead are left
        as they are. Returns the reports replayed, as they were (dead), for the audit trail."""

        def run(tx: Tx) -> list[EhrReport]:
            out = []
            for item_id in dict.fromkeys(item_ids):
                row = tx.one(
                    "SELECT * FROM ehr_reports WHERE item_id = ? AND state = 'dead'" + tx.for_update, (item_id,)
                )
                if row is None:
                    continue
                tx.execute(
                    "UPDATE ehr_reports SET state = 'pending', attempts = 0, waits = 0, not_before = ?"
                    " WHERE item_id = ? AND state = 'dead'",
                    (now, item_id),
                )
                out.append(_report(row, self._seal))
            return out

        return self._db.run(run)

    def listing(self, state: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Reports for operators, newest first, without PHI: item, SR and study UIDs, state,
        attempts, when queued and delivered, and of the last error only what precedes its first
        ``:`` (``HTTP 422``; the endpoint's own text may quote the patient, as the audit trail
        leaves it out too)."""
        where, args = ("WHERE state = ?", [state]) if state else ("", [])
        with self._db.read() as tx:
            rows = tx.all(
                "SELECT item_id, sr_uid, study_uid, job_id, state, attempts, waits, not_before, last_error,"
                f" created_at, delivered_at, cell FROM ehr_reports {where} ORDER BY item_id DESC LIMIT ?",
                [*args, limit],
            )
        out = []
        for r in rows:
            row = {k: v for k, v in r.items() if k != "last_error"}
            row["error"] = self._seal.open_text(r["last_error"]).split(":")[0]
            out.append(row)
        return out

    def reports(self) -> list[EhrReport]:
        """Every report, oldest first (PHI: for status and tests)."""
        with self._db.read() as tx:
            return [_report(r, self._seal) for r in tx.all("SELECT * FROM ehr_reports ORDER BY item_id")]

    def counts(self) -> dict[str, int]:
        """Reports per state."""
        with self._db.read() as tx:
            found = {
                r["state"]: int(r["n"]) for r in tx.all("SELECT state, COUNT(*) AS n FROM ehr_reports GROUP BY state")
            }
        return {s: found.get(s, 0) for s in ("pending", "delivered", "dead")}
