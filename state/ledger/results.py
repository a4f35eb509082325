"""Our AI results per study (SR versions) and the review flags raised on the way."""

from __future__ import annotations

import json

from core.ledger import RaiseReviewFlag, RecordSrVersions
from core.results import ReviewFlag, SrVersion
from state.db import Database, Row, Tx
from state.ledger._codec import RecordCodec

__all__ = ["Results", "apply_flag", "apply_versions"]


def apply_versions(tx: Tx, effect: RecordSrVersions, codec: RecordCodec, now: float) -> None:
    """Record SR versions (once each)."""
    tx.executemany(
        "INSERT INTO sr_results (sop_instance_uid, sop_class_uid, series_uid, study_uid, job_id,"
        " job_version, family, model_name, model_version, predecessor_uid, prediction,"
        " created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (sop_instance_uid) DO NOTHING",
        [(v.sop_instance_uid, v.sop_class_uid, v.series_instance_uid, v.study_uid, v.job_id,
          v.job_version, v.family, v.model_name, v.model_version, v.predecessor_uid,
          codec.dump_prediction(v.prediction), now) for v in effect.versions],
    )


def apply_flag(tx: Tx, job_id: int, effect: RaiseReviewFlag, now: float) -> None:
    """Raise a review flag (once per kind and study pair)."""
    tx.execute(
        "INSERT INTO review_flags (at, kind, study_uid, other_study_uid, job_id, detail)"
        " VALUES (?,?,?,?,?,?) ON CONFLICT (kind, study_uid, other_study_uid) DO NOTHING",
        (now, effect.kind, effect.study_uid, effect.other_study_uid, job_id,
         json.dumps(dict(effect.detail), sort_keys=True, default=str)),
    )


class Results:
    """SR versions, our own series, review flags."""

    def __init__(self, db: Database, codec: RecordCodec) -> None:
        self._db = db
        self._codec = codec

    def _version(self, row: Row) -> SrVersion:
        return SrVersion(row["sop_instance_uid"], row["sop_class_uid"], row["series_uid"],
                         row["study_uid"], int(row["job_id"]), int(row["job_version"]),
                         row["family"], row["model_name"], row["model_version"],
                         row["predecessor_uid"], self._codec.load_prediction(row["prediction"]),
                         float(row["created_at"]))

    def versions(self, study_uid: str, family: str | None = None) -> list[SrVersion]:
        """Our SR versions of a study (oldest job version first).

        Raises:
            RecordError: A stored prediction cannot be read.
        """
        sql, args = "SELECT * FROM sr_results WHERE study_uid = ?", [study_uid]
        if family is not None:
            sql, args = sql + " AND family = ?", [*args, family]
        with self._db.read() as tx:
            rows = tx.all(sql + " ORDER BY job_version, created_at", args)
        return [self._version(r) for r in rows]

    def latest(self, study_uid: str, family: str, before_version: int | None = None) -> SrVersion | None:
        """The newest SR of a study and family (of a job version below ``before_version``)."""
        rows = [v for v in self.versions(study_uid, family)
                if before_version is None or v.job_version < before_version]
        return rows[-1] if rows else None

    def own_series(self, study_uid: str) -> set[str]:
        """Series of the study that hold our own results (SRs and Parametric Maps)."""
        with self._db.read() as tx:
            rows = tx.all(
                "SELECT series_uid FROM sr_results WHERE study_uid = ?"
                " UNION SELECT o.series_uid FROM outbox o JOIN jobs j ON j.job_id = o.job_id"
                " WHERE j.study_uid = ? AND o.series_uid != ''", (study_uid, study_uid))
        return {r["series_uid"] for r in rows}

    def review_flags(self, include_resolved: bool = False) -> list[ReviewFlag]:
        """Review flags, oldest first."""
        where = "" if include_resolved else " WHERE resolved = 0"
        with self._db.read() as tx:
            rows = tx.all(f"SELECT * FROM review_flags{where} ORDER BY flag_id")
        return [ReviewFlag(int(r["flag_id"]), float(r["at"]), r["kind"], r["study_uid"],
                           r["other_study_uid"], None if r["job_id"] is None else int(r["job_id"]),
                           json.loads(r["detail"]), bool(r["resolved"])) for r in rows]
