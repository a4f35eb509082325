"""What the ledger knows about studies beyond their jobs (issue #5), read and written here.

- Receiving studies with their instance counts per series (evidence-based completeness).
- Our AI results, one row per SR version (``sr_results``): predecessors for late instances,
  prior AI results for interval change, and our own series left out of the PACS's counts.
- Prior series we asked the PACS to send (``prior_retrievals``).
- Review flags (``review_flags``), e.g. a study with our patient's ID but another patient.

``StudyRecords`` shares its ``SqliteLedger``'s connection, lock and transactions (the same
adapter package; ``ledger.py`` keeps the job state machine, this module the study facts).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from actors.adapters.ledger import SqliteLedger, _instance
from core.completeness import ReceivingStudy
from core.types import InstanceMeta, JobState

__all__ = ["StudyRecords", "review_flag_statement"]


def review_flag_statement(
    kind: str, study_uid: str, other_study_uid: str, job_id: int, detail: dict[str, Any],
    now: float,
) -> tuple[str, Sequence[Any]]:
    """An ``(sql, args)`` that raises a review flag (once per kind and study pair).

    Pass it in ``SqliteLedger.transition(extra=...)`` so the flag commits with its audit event.
    """
    return (
        "INSERT OR IGNORE INTO review_flags (at, kind, study_uid, other_study_uid, job_id, detail)"
        " VALUES (?,?,?,?,?,?)",
        (now, kind, study_uid, other_study_uid, job_id, json.dumps(detail, sort_keys=True)),
    )


class StudyRecords:
    """Study-level reads and writes on one ``SqliteLedger``."""

    def __init__(self, ledger: SqliteLedger) -> None:
        """Args:
        ledger: This process's ledger (its connection is shared).
        """
        self._ledger = ledger

    # ---------------------------------------------------------- completeness
    def receiving_studies(self, now: float, job_id: int | None = None) -> list[ReceivingStudy]:
        """Receiving jobs nobody leases now, with what we hold of their studies per series.

        Args:
            now: Current time (leases held by a live worker are skipped).
            job_id: Only this job (leased or not).
        """
        where, args = ("j.job_id = ?", [job_id]) if job_id is not None else ("j.leased_until <= ?", [now])
        rows = self._ledger._read(
            "SELECT j.job_id, j.study_uid, j.last_instance_at, i.series_uid, COUNT(*) AS n,"
            " (SELECT calling_ae FROM instances l WHERE l.study_uid = j.study_uid"
            "  ORDER BY l.received_at DESC LIMIT 1) AS ae"
            " FROM jobs j JOIN instances i ON i.study_uid = j.study_uid"
            f" WHERE j.state = ? AND {where} AND COALESCE(i.override, '') != 'discarded'"
            " GROUP BY j.job_id, i.series_uid ORDER BY j.job_id",
            [JobState.RECEIVING.value, *args],
        )
        out: dict[int, dict[str, Any]] = {}
        for r in rows:
            entry = out.setdefault(r["job_id"], {
                "study_uid": r["study_uid"], "last": float(r["last_instance_at"]),
                "ae": r["ae"] or "", "received": {},
            })
            entry["received"][r["series_uid"]] = int(r["n"])
        return [
            ReceivingStudy(jid, e["study_uid"], e["ae"], e["last"], e["received"])
            for jid, e in out.items()
        ]

    def receiving_instances(self) -> list[InstanceMeta]:
        """Instances of studies whose latest job is still receiving (for pre-validation)."""
        rows = self._ledger._read(
            "SELECT i.* FROM jobs j JOIN instances i ON i.study_uid = j.study_uid"
            " WHERE j.state = ? AND COALESCE(i.override, '') = ''"
            " ORDER BY i.received_at, i.sop_instance_uid",
            (JobState.RECEIVING.value,),
        )
        return [_instance(r) for r in rows]

    def own_series(self, study_uid: str) -> set[str]:
        """Series of the study that hold our own results (SRs and Parametric Maps)."""
        rows = self._ledger._read(
            "SELECT series_uid FROM sr_results WHERE study_uid = ?"
            " UNION SELECT o.series_uid FROM outbox o JOIN jobs j ON j.job_id = o.job_id"
            " WHERE j.study_uid = ? AND o.series_uid != ''",
            (study_uid, study_uid),
        )
        return {r[0] for r in rows}

    # --------------------------------------------------------------- results
    def results(self, study_uid: str, family: str | None = None) -> list[dict[str, Any]]:
        """Our SR versions of a study (oldest job version first)."""
        sql, args = "SELECT * FROM sr_results WHERE study_uid = ?", [study_uid]
        if family is not None:
            sql, args = sql + " AND family = ?", [*args, family]
        rows = self._ledger._read(sql + " ORDER BY job_version, created_at", args)
        return [dict(r) | {"prediction": json.loads(r["prediction"])} for r in rows]

    def latest_result(
        self, study_uid: str, family: str, before_version: int | None = None
    ) -> dict[str, Any] | None:
        """The newest SR of a study and family (from a job version below ``before_version``)."""
        rows = [
            r for r in self.results(study_uid, family)
            if before_version is None or r["job_version"] < before_version
        ]
        return rows[-1] if rows else None

    # ---------------------------------------------------------------- priors
    def expect_prior_series(
        self, series_uid: str, study_uid: str, for_study_uid: str, job_id: int, now: float
    ) -> None:
        """Record, before asking the PACS to send it, that a series comes as a prior."""
        with self._ledger._tx() as cur:
            cur.execute(
                "INSERT INTO prior_retrievals (series_uid, study_uid, for_study_uid, job_id,"
                " requested_at) VALUES (?,?,?,?,?) ON CONFLICT (series_uid) DO UPDATE SET"
                " for_study_uid = excluded.for_study_uid, job_id = excluded.job_id,"
                " requested_at = excluded.requested_at",
                (series_uid, study_uid, for_study_uid, job_id, now),
            )

    def series_instances(self, series_uid: str) -> list[InstanceMeta]:
        """Instances of a series that we hold (e.g. a retrieved prior), in arrival order."""
        rows = self._ledger._read(
            "SELECT * FROM instances WHERE series_uid = ? ORDER BY received_at, sop_instance_uid",
            (series_uid,),
        )
        return [_instance(r) for r in rows]

    def instances(self, sop_instance_uids: Iterable[str]) -> list[InstanceMeta]:
        """The instances with these SOP Instance UIDs that we hold, in the order asked."""
        uids = list(sop_instance_uids)
        if not uids:
            return []
        marks = ",".join("?" * len(uids))
        rows = self._ledger._read(
            f"SELECT * FROM instances WHERE sop_instance_uid IN ({marks})", uids
        )
        found = {r["sop_instance_uid"]: _instance(r) for r in rows}
        return [found[u] for u in uids if u in found]

    # ---------------------------------------------------------------- review
    def review_flags(self, include_resolved: bool = False) -> list[dict[str, Any]]:
        """Review flags, oldest first."""
        where = "" if include_resolved else " WHERE resolved = 0"
        rows = self._ledger._read(f"SELECT * FROM review_flags{where} ORDER BY flag_id")
        return [dict(r) | {"detail": json.loads(r["detail"])} for r in rows]
