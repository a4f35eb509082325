"""The EHR outbox: FHIR report Bundles waiting for (or after) delivery to the EHR.

Its own SQLite file (``var/ehr_outbox.sqlite``): a Bundle names the patient, so it is PHI and
stays out of the ledger; and its writes never contend with the HL7 listener's group commit.
One row per SR (its SOP Instance UID is unique), so queueing twice is harmless.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from actors.adapters.group_commit import connect

__all__ = ["EhrOutbox"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ehr_reports (
    item_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    sr_uid       TEXT NOT NULL UNIQUE,
    job_id       INTEGER NOT NULL,
    study_uid    TEXT NOT NULL,
    priority     INTEGER NOT NULL DEFAULT 0,
    bundle       TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending',   -- 'pending' | 'delivered' | 'dead'
    attempts     INTEGER NOT NULL DEFAULT 0,        -- refusals: spend the retry budget
    waits        INTEGER NOT NULL DEFAULT 0,        -- consecutive "endpoint down" waits
    not_before   REAL NOT NULL,
    last_error   TEXT NOT NULL DEFAULT '',
    created_at   REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS ehr_reports_due ON ehr_reports (state, not_before);
CREATE TABLE IF NOT EXISTS ehr_meta (name TEXT PRIMARY KEY, value REAL NOT NULL);
"""


class EhrOutbox:
    """Durable queue of report Bundles (one process writes it: the EHR delivery actor)."""

    def __init__(self, path: Path) -> None:
        """Args:
        path: The outbox file (created if missing).
        """
        self._con = connect(path, _SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the connection."""
        self._con.close()

    def enabled_since(self, now: float) -> float:
        """When results to the EHR were first switched on (SRs delivered before stay out)."""
        with self._lock:
            self._con.execute(
                "INSERT OR IGNORE INTO ehr_meta (name, value) VALUES ('enabled_at', ?)", (now,)
            )
            return float(self._con.execute(
                "SELECT value FROM ehr_meta WHERE name = 'enabled_at'"
            ).fetchone()[0])

    def enqueue(
        self, sr_uid: str, job_id: int, study_uid: str, priority: int, bundle: dict[str, Any],
        now: float,
    ) -> bool:
        """Queue a report durably; ``False`` if this SR's report was queued before."""
        with self._lock:
            cur = self._con.execute(
                "INSERT OR IGNORE INTO ehr_reports (sr_uid, job_id, study_uid, priority, bundle,"
                " not_before, created_at) VALUES (?,?,?,?,?,?,?)",
                (sr_uid, job_id, study_uid, priority, json.dumps(bundle), now, now),
            )
            return cur.rowcount == 1

    def due(self, now: float, limit: int) -> list[dict[str, Any]]:
        """Pending reports whose time has come, highest priority first."""
        with self._lock:
            rows = self._con.execute(
                "SELECT * FROM ehr_reports WHERE state = 'pending' AND not_before <= ?"
                " ORDER BY priority DESC, item_id LIMIT ?", (now, limit),
            ).fetchall()
        return [dict(r) | {"bundle": json.loads(r["bundle"])} for r in rows]

    def delivered(self, item_id: int, now: float) -> None:
        """The endpoint accepted the report."""
        with self._lock:
            self._con.execute(
                "UPDATE ehr_reports SET state = 'delivered', delivered_at = ?, waits = 0,"
                " last_error = '' WHERE item_id = ?", (now, item_id),
            )

    def defer(
        self, item_id: int, not_before: float, error: str, *, spent: bool, dead: bool = False
    ) -> None:
        """Try again at ``not_before``; ``spent`` counts an attempt, ``dead`` gives up."""
        with self._lock:
            self._con.execute(
                "UPDATE ehr_reports SET not_before = ?, last_error = ?,"
                " attempts = attempts + ?, waits = CASE WHEN ? THEN 0 ELSE waits + 1 END,"
                " state = CASE WHEN ? THEN 'dead' ELSE state END WHERE item_id = ?",
                (not_before, error[:1000], int(spent), int(spent), int(dead), item_id),
            )

    def reports(self) -> list[dict[str, Any]]:
        """Every report row, oldest first (PHI: for status and tests)."""
        with self._lock:
            rows = self._con.execute("SELECT * FROM ehr_reports ORDER BY item_id").fetchall()
        return [dict(r) | {"bundle": json.loads(r["bundle"])} for r in rows]

    def counts(self) -> dict[str, int]:
        """Reports per state."""
        with self._lock:
            rows = self._con.execute("SELECT state, COUNT(*) FROM ehr_reports GROUP BY state")
            found = {r[0]: int(r[1]) for r in rows}
        return {s: found.get(s, 0) for s in ("pending", "delivered", "dead")}
