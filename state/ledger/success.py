"""The success measures' records (issue 12), read from what the ledger holds: results, views,
reviews, inference outcomes; and the agreement alerts already raised.

- A result (``core.success_metrics.ResultRecord``) is an SR version the PACS accepted: its
  ``outbox`` row is ``delivered``. Archive time is its job's last instance time
  (``jobs.last_instance_at``), SR time the outbox's ``delivered_at``, opened the first
  ``result_views`` row of that SR, and what the AI said its ``alert_items`` (findings, not the
  image-quality flags). The model is ``<family>@<version>`` of the ``sr_results`` row.
- A review (``ReviewRecord``) is a ``finding_reviews`` row, attributed to the model of the SR
  version it reviewed (joined from ``sr_results``, so it always matches its result).
- Health (``HealthSample``): the ledger keeps no history of a model deployment's health
  (``stage_health`` holds each actor's latest heartbeat only). What it has over time is the
  audit trail's inference outcomes: each ``inferred`` event is a sample in which the version
  answered (its shadow versions too), each ``inference_failed`` event naming a version one in
  which it did not. So uptime is the share of inference attempts a version answered; an outage
  with no study to infer, or one the stages waited out without an event, is not seen.

``since`` is a POSIX time: results delivered (reviews of results delivered, or given) from then.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from core.audit import AuditEvent
from core.results import DeliveryState
from core.success_metrics import (
    AgreementAlert,
    FindingOutcome,
    HealthSample,
    MonthlyMeasures,
    ResultRecord,
    ReviewRecord,
    measures,
)
from core.types import AuditEventType
from state.db import Database, Tx
from state.ledger.audit import append_events

__all__ = ["SuccessReads", "month_start", "months_back"]


def month_start(month: str) -> float:
    """The POSIX time a ``YYYY-MM`` month (UTC) begins.

    >>> month_start("1970-02")
    2678400.0

    Raises:
        ValueError: ``month`` is not ``YYYY-MM``.
    """
    try:
        return datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise ValueError(f"month: got {month!r}; expected YYYY-MM") from None


def months_back(now: float, months: int) -> float:
    """The start of the month ``months - 1`` months before the one of ``now`` (``months=1``:
    this month's start).

    >>> months_back(month_start("2026-03") + 5.0, 3) == month_start("2026-01")
    True
    """
    at = datetime.fromtimestamp(now, UTC)
    index = at.year * 12 + at.month - 1 - (max(1, months) - 1)
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC).timestamp()


_DELIVERED = DeliveryState.DELIVERED.value
_EVER = -1.0e18
"""``since`` when none is given (portable: no infinities in SQL)."""
_RESULTS = (
    "SELECT r.sop_instance_uid AS sr_uid, r.study_uid, r.family, r.model_version,"
    " j.last_instance_at AS archived_at, o.delivered_at AS sr_at,"
    " (SELECT MIN(v.first_at) FROM result_views v WHERE v.sr_uid = r.sop_instance_uid) AS opened_at"
    " FROM sr_results r JOIN jobs j ON j.job_id = r.job_id"
    " JOIN outbox o ON o.job_id = r.job_id AND o.sop_instance_uid = r.sop_instance_uid"
    " WHERE o.state = ? AND o.delivered_at >= ? ORDER BY o.delivered_at, r.sop_instance_uid"
)
_FINDINGS = (
    "SELECT a.sr_uid, a.finding, a.present, a.critical FROM alert_items a"
    " JOIN outbox o ON o.sop_instance_uid = a.sr_uid"
    " WHERE a.quality_flag = 0 AND o.state = ? AND o.delivered_at >= ? ORDER BY a.item_id"
)
_REVIEWS = (
    "SELECT f.study_uid, r.family, r.model_version, f.finding, f.assessment, f.final_present, f.reviewed_at"
    " FROM finding_reviews f JOIN sr_results r ON r.sop_instance_uid = f.sr_uid"
    " LEFT JOIN outbox o ON o.job_id = r.job_id AND o.sop_instance_uid = f.sr_uid AND o.state = ?"
    " WHERE COALESCE(o.delivered_at, f.reviewed_at) >= ? ORDER BY f.reviewed_at"
)


def _model(family: str, version: str) -> str:
    return f"{family}@{version}"


class SuccessReads:
    """Reads behind ``core.success_metrics`` and the record of agreement alerts raised."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def records(self, since: float | None = None) -> tuple[list[ResultRecord], list[ReviewRecord]]:
        """Every delivered result since ``since`` (oldest first) and the reviews of them."""
        start = since if since is not None else _EVER
        with self._db.read() as tx:
            rows = tx.all(_RESULTS, (_DELIVERED, start))
            findings = tx.all(_FINDINGS, (_DELIVERED, start))
            reviews = tx.all(_REVIEWS, (_DELIVERED, start))
        said: dict[str, list[FindingOutcome]] = {}
        for f in findings:
            said.setdefault(f["sr_uid"], []).append(
                FindingOutcome(f["finding"], bool(f["present"]), bool(f["critical"]))
            )
        results = [
            ResultRecord(
                r["study_uid"],
                _model(r["family"], r["model_version"]),
                float(r["archived_at"]),
                float(r["sr_at"]),
                None if r["opened_at"] is None else float(r["opened_at"]),
                tuple(said.get(r["sr_uid"], ())),
            )
            for r in rows
        ]
        return results, [
            ReviewRecord(
                v["study_uid"],
                _model(v["family"], v["model_version"]),
                v["finding"],
                v["assessment"],
                bool(v["final_present"]),
                float(v["reviewed_at"]),
            )
            for v in reviews
        ]

    def health(self, since: float | None = None) -> list[HealthSample]:
        """Inference outcomes per model version (see the module: the only health over time)."""
        types = (AuditEventType.INFERRED.value, AuditEventType.INFERENCE_FAILED.value)
        with self._db.read() as tx:
            rows = tx.all(
                "SELECT at, type, detail FROM audit WHERE type IN (?, ?) AND at >= ? ORDER BY at",
                (*types, since if since is not None else _EVER),
            )
        samples = []
        for r in rows:
            detail = json.loads(r["detail"] or "{}")
            family, version = detail.get("family"), detail.get("version")
            if not family or not version:
                continue  # a prior's failure names no version
            up = r["type"] == types[0]
            samples.append(HealthSample(_model(family, str(version)), float(r["at"]), up))
            if up:
                samples.extend(
                    HealthSample(_model(family, str(s)), float(r["at"]), True) for s in detail.get("shadow", ())
                )
        return samples

    def monthly(self, since: float | None = None, *, with_health: bool = True) -> list[MonthlyMeasures]:
        """The measures per model version and month (``core.success_metrics.measures``)."""
        results, reviews = self.records(since)
        return measures(results, reviews, self.health(since) if with_health else ())

    def alerted(self) -> set[tuple[str, str]]:
        """The (model version, month) pairs already alerted."""
        with self._db.read() as tx:
            rows = tx.all("SELECT model_version, month FROM agreement_alerts")
        return {(r["model_version"], r["month"]) for r in rows}

    def record_alerts(self, alerts: Sequence[AgreementAlert], actor: str, now: float) -> list[AgreementAlert]:
        """Record the alerts not recorded before, each with an ``agreement_below_floor`` audit
        event, in one transaction; return those that were new."""

        def record(tx: Tx) -> list[AgreementAlert]:
            new = [
                a
                for a in alerts
                if tx.execute(
                    "INSERT INTO agreement_alerts (model_version, month, agreement_rate, reviews, floor, alerted_at)"
                    " VALUES (?,?,?,?,?,?) ON CONFLICT (model_version, month) DO NOTHING",
                    (a.model_version, a.month, a.agreement_rate, a.reviews, a.floor, now),
                )
            ]
            events = [
                AuditEvent(
                    AuditEventType.AGREEMENT_BELOW_FLOOR,
                    actor,
                    detail={
                        "model_version": a.model_version,
                        "month": a.month,
                        "agreement_rate": round(a.agreement_rate, 4),
                        "reviews": a.reviews,
                        "floor": a.floor,
                    },
                )
                for a in new
            ]
            append_events(tx, events, now)
            return new

        return self._db.run(record) if alerts else []

    def record_export(self, actor: str, rows: int, since: float | None, out: str, now: float) -> None:
        """Audit an export of the measures (``metrics_exported``): who, how many rows, from when, where."""
        detail = {"rows": rows, "since": since, "out": out}
        self._db.run(
            lambda tx: append_events(tx, [AuditEvent(AuditEventType.METRICS_EXPORTED, actor, detail=detail)], now)
        )
