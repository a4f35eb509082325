"""Model versions at runtime (issue 17): the live version per family, halted versions, shadow
results, and what the site observed of each version (the model card).

Promote and rollback change the state and append their audit event (``model_promoted``,
``model_rolled_back``) in one transaction, as AI switches do. Which version *would* be live
without a ledger row (the family entry's own) is config, so the callers (``api.operations``)
name the versions that lose their traffic; the rules are ``core.rollout``'s.

A shadow result keeps the shadow's prediction (``RecordCodec``, like ``sr_results``; its
heatmaps are not stored) and its comparison with the live one (a ``core.codec`` record), once
per job, family and shadow version: a job retried after a failure overwrites its own row.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace

from core.audit import AuditEvent
from core.codec import dump_record, load_record
from core.errors import RecordError
from core.records import Prediction
from core.rollout import (
    Halt,
    HaltCause,
    LiveSetting,
    ObservedMetrics,
    RolloutState,
    ShadowComparison,
    ShadowSummary,
    summarize,
)
from core.types import AuditEventType
from core.versions import VersionState
from state.db import Database, Tx
from state.ledger._codec import RecordCodec
from state.ledger.audit import append_events

__all__ = ["ModelVersions", "OBSERVED_MAX"]

logger = logging.getLogger(__name__)

OBSERVED_MAX = 10_000
"""Most results (and shadow comparisons) the observed rates are computed over, newest first."""
_NOT_RESULTS = (VersionState.SUPERSEDED.value, VersionState.ABANDONED.value)


def _state(tx: Tx, family: str) -> RolloutState:
    row = tx.one("SELECT version, actor, reason, at FROM model_live WHERE family = ?", (family,))
    live = None if row is None else LiveSetting(row["version"], row["actor"], float(row["at"]), row["reason"])
    halts = tx.all(
        "SELECT version, cause, actor, reason, at FROM model_halts WHERE family = ? ORDER BY version", (family,)
    )
    halted = tuple(Halt(h["version"], HaltCause(h["cause"]), h["actor"], float(h["at"]), h["reason"]) for h in halts)
    return RolloutState(family, live, halted)


def _set_live(tx: Tx, family: str, version: str, actor: str, reason: str, now: float) -> None:
    tx.execute(
        "INSERT INTO model_live (family, version, actor, reason, at) VALUES (?,?,?,?,?)"
        " ON CONFLICT (family) DO UPDATE SET version = excluded.version, actor = excluded.actor,"
        " reason = excluded.reason, at = excluded.at",
        (family, version, actor, reason, now),
    )
    tx.execute("DELETE FROM model_halts WHERE family = ? AND version = ?", (family, version))


def _halt(tx: Tx, family: str, versions: Sequence[str], cause: HaltCause, actor: str, reason: str, now: float) -> None:
    tx.executemany(
        "INSERT INTO model_halts (family, version, cause, actor, reason, at) VALUES (?,?,?,?,?,?)"
        " ON CONFLICT (family, version) DO UPDATE SET cause = excluded.cause, actor = excluded.actor,"
        " reason = excluded.reason, at = excluded.at",
        [(family, v, cause.value, actor, reason, now) for v in versions],
    )


class ModelVersions:
    """The ``model_live``, ``model_halts`` and ``shadow_results`` tables."""

    def __init__(self, db: Database, codec: RecordCodec) -> None:
        self._db = db
        self._codec = codec

    def rollout(self, family: str) -> RolloutState:
        """The family's rollout state (read afresh: the inference stage asks once per job)."""
        with self._db.read() as tx:
            return _state(tx, family)

    def promote(self, family: str, version: str, previous: str, actor: str, reason: str, now: float) -> RolloutState:
        """Make ``version`` live (its halt cleared); ``previous``, the version live until now,
        gets no studies until it is made live again (halted as ``superseded``). Audited
        (``model_promoted``) in the same transaction.

        Returns:
            The family's state afterwards.
        """

        def promote(tx: Tx) -> RolloutState:
            _set_live(tx, family, version, actor, reason, now)
            if previous != version:
                _halt(tx, family, [previous], HaltCause.SUPERSEDED, actor, f"{version} promoted", now)
            detail = {"family": family, "version": version, "previous": previous, "reason": reason}
            append_events(tx, [AuditEvent(AuditEventType.MODEL_PROMOTED, actor, detail=detail)], now)
            return _state(tx, family)

        return self._db.run(promote)

    def rollback(
        self, family: str, version: str, halt: Sequence[str], actor: str, reason: str, now: float
    ) -> RolloutState:
        """Make ``version`` live (its halt cleared) and halt the versions rolled back from
        (``rolled_back``: their configured canary, rule or shadow traffic stops). Audited
        (``model_rolled_back``) in the same transaction.

        Args:
            family: The model family.
            version: The version to go back to.
            halt: The versions rolled back from (the live one, or the candidates beside it).
            actor: Who (audited).
            reason: Why (audited).
            now: Epoch seconds.

        Returns:
            The family's state afterwards.
        """
        rolled = sorted(set(halt) - {version})

        def rollback(tx: Tx) -> RolloutState:
            _set_live(tx, family, version, actor, reason, now)
            _halt(tx, family, rolled, HaltCause.ROLLED_BACK, actor, reason, now)
            detail = {"family": family, "version": version, "from": rolled, "reason": reason}
            append_events(tx, [AuditEvent(AuditEventType.MODEL_ROLLED_BACK, actor, detail=detail)], now)
            return _state(tx, family)

        return self._db.run(rollback)

    def record_shadow(
        self,
        job_id: int,
        study_uid: str,
        family: str,
        live_version: str,
        shadow_version: str,
        shadow: Prediction,
        comparison: ShadowComparison,
        now: float,
    ) -> None:
        """Store what a shadow version said of a study and how it compares with the live one
        (its heatmaps are dropped: a shadow result is never shown).

        Args:
            job_id: The job that ran it (a retried job overwrites its own row).
            study_uid: The study.
            family: The model family.
            live_version: The version whose result the job used.
            shadow_version: The shadow version.
            shadow: What the shadow version predicted.
            comparison: ``core.rollout.compare(live prediction, shadow)``.
            now: Epoch seconds.
        """
        prediction = self._codec.dump_prediction(replace(shadow, heatmaps=()))
        compared = json.dumps(dump_record(comparison), sort_keys=True, separators=(",", ":"))
        self._db.run(
            lambda tx: tx.execute(
                "INSERT INTO shadow_results (job_id, family, shadow_version, study_uid, live_version,"
                " prediction, comparison, created_at) VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT (job_id, family, shadow_version) DO UPDATE SET"
                " live_version = excluded.live_version, prediction = excluded.prediction,"
                " comparison = excluded.comparison, created_at = excluded.created_at",
                (job_id, family, shadow_version, study_uid, live_version, prediction, compared, now),
            )
        )

    def shadow_predictions(self, family: str, version: str, study_uid: str) -> list[Prediction]:
        """What a shadow version said of a study (one per job that ran it, oldest first).

        Raises:
            RecordError: A stored prediction cannot be read.
        """
        with self._db.read() as tx:
            rows = tx.all(
                "SELECT prediction FROM shadow_results WHERE family = ? AND shadow_version = ? AND study_uid = ?"
                " ORDER BY job_id",
                (family, version, study_uid),
            )
        return [self._codec.load_prediction(r["prediction"]) for r in rows]

    def shadow_summary(self, family: str, version: str) -> ShadowSummary:
        """A shadow version's agreement with the live one over its newest ``OBSERVED_MAX`` studies
        (comparisons that cannot be read are left out and logged)."""
        with self._db.read() as tx:
            rows = tx.all(
                "SELECT live_version, comparison FROM shadow_results WHERE family = ? AND shadow_version = ?"
                " ORDER BY created_at DESC LIMIT ?",
                (family, version, OBSERVED_MAX),
            )
        pairs, unreadable = [], 0
        for r in rows:
            try:
                pairs.append((str(r["live_version"]), load_record(ShadowComparison, json.loads(r["comparison"]))))
            except (RecordError, ValueError):
                unreadable += 1
        if unreadable:
            logger.warning("%s %s: %d shadow comparison(s) unreadable, left out", family, version, unreadable)
        return summarize(family, version, pairs)

    def observed(self, family: str, version: str) -> ObservedMetrics:
        """What the site observed of one version: studies and results (SRs of it that are, or
        will be, results), positive rates over the newest ``OBSERVED_MAX`` of them, and its
        shadow agreement. Agreement with readers is not available (no per-finding review yet).
        """
        where = f"family = ? AND model_version = ? AND state NOT IN ({','.join('?' * len(_NOT_RESULTS))})"
        args = (family, version, *_NOT_RESULTS)
        with self._db.read() as tx:
            counts = tx.one(f"SELECT COUNT(*) AS n, COUNT(DISTINCT study_uid) AS s FROM sr_results WHERE {where}", args)
            rows = tx.all(
                f"SELECT prediction FROM sr_results WHERE {where} ORDER BY created_at DESC LIMIT ?",
                (*args, OBSERVED_MAX),
            )
            shadowed = tx.one(
                "SELECT COUNT(*) AS n FROM shadow_results WHERE family = ? AND shadow_version = ?", (family, version)
            )
        present, any_present, read = {}, 0, 0
        for r in rows:
            try:
                prediction = self._codec.load_prediction(r["prediction"])
            except RecordError as exc:
                logger.warning("%s %s: a stored prediction is unreadable, left out (%s)", family, version, exc)
                continue
            read += 1
            keys = [f.key for f in prediction.findings if f.present]
            any_present += bool(keys)
            for f in prediction.findings:
                present[f.key] = present.get(f.key, 0) + int(f.present)
        shadow = self.shadow_summary(family, version) if shadowed and int(shadowed["n"]) else None
        return ObservedMetrics(
            version,
            int(counts["s"]) if counts else 0,
            int(counts["n"]) if counts else 0,
            any_present / read if read else None,
            {k: n / read for k, n in sorted(present.items())} if read else {},
            shadow,
        )
