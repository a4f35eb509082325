"""Controls: the runtime AI switches and the actors' recorded health."""

from __future__ import annotations

import json
from dataclasses import dataclass

from core.audit import AuditEvent
from core.codec import from_jsonable, to_jsonable
from core.health import ActorHealth, HealthStatus, LoopHealth
from core.routing import AiSwitches
from core.status import StageRecord
from core.types import AuditEventType
from state.db import Database, Row, Tx
from state.ledger.audit import append_events

__all__ = ["AiScope", "AiSwitchSetting", "Controls"]

AiScope = ("study", "modality")
"""What an AI switch applies to."""


@dataclass(frozen=True, slots=True)
class AiSwitchSetting:
    """One AI switch as set: what it applies to, on or off, who set it, when and why."""

    scope: str
    """``study`` or ``modality``."""
    key: str
    """The Study Instance UID, or the modality (upper case)."""
    enabled: bool
    reason: str
    actor: str
    at: float


def _setting(row: Row) -> AiSwitchSetting:
    return AiSwitchSetting(
        row["scope"], row["key"], bool(row["enabled"]), row["reason"], row["actor"], float(row["at"])
    )


def _stage(row: Row) -> StageRecord:
    loops = from_jsonable(tuple[LoopHealth, ...], json.loads(row["loops"] or "[]"), "stage_health")
    health = ActorHealth(
        row["stage"],
        int(row["pid"]),
        int(row["processed"]),
        int(row["failures"]),
        int(row["in_flight"]),
        row["last_error"],
        loops,
    )
    try:
        status = HealthStatus(row["status"])
    except ValueError:
        status = HealthStatus.DOWN
    return StageRecord(health, float(row["heartbeat_at"]), status)


class Controls:
    """AI switches (per study, per modality) and stage health."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def ai_switches(self) -> AiSwitches:
        """The current runtime AI switches."""
        with self._db.read() as tx:
            rows = tx.all("SELECT scope, key, enabled FROM ai_switches")
        studies = frozenset(r["key"] for r in rows if r["scope"] == "study" and not r["enabled"])
        modalities = {r["key"]: bool(r["enabled"]) for r in rows if r["scope"] == "modality"}
        return AiSwitches(studies, modalities)

    def switch_settings(self) -> list[AiSwitchSetting]:
        """Every AI switch set so far, by scope and key."""
        with self._db.read() as tx:
            rows = tx.all("SELECT scope, key, enabled, reason, actor, at FROM ai_switches ORDER BY scope, key")
        return [_setting(r) for r in rows]

    def set_ai_switch(self, scope: str, key: str, enabled: bool, reason: str, actor: str, now: float) -> None:
        """Switch AI on or off for a study or a modality (effective at the next decision).

        Raises:
            ValueError: ``scope`` is not ``study`` or ``modality``.
        """
        if scope not in AiScope:
            raise ValueError(f"scope: got {scope!r}; expected 'study' or 'modality'")
        key = key.upper() if scope == "modality" else key

        def switch(tx: Tx) -> None:
            tx.execute(
                "INSERT INTO ai_switches (scope, key, enabled, reason, actor, at)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT (scope, key) DO UPDATE SET"
                " enabled = excluded.enabled, reason = excluded.reason, actor = excluded.actor,"
                " at = excluded.at",
                (scope, key, int(enabled), reason, actor, now),
            )
            detail = {"scope": scope, "key": key, "enabled": enabled, "reason": reason}
            append_events(
                tx,
                [AuditEvent(AuditEventType.AI_SWITCH_CHANGED, actor, key if scope == "study" else "", detail=detail)],
                now,
            )

        self._db.run(switch)

    def record_health(self, health: ActorHealth, now: float, status: HealthStatus | None = None) -> None:
        """Record what an actor reported (or that it did not answer)."""
        state = (status or health.status).value
        loops = json.dumps(to_jsonable(health.loops, tuple[LoopHealth, ...]))
        self._db.run(
            lambda tx: tx.execute(
                "INSERT INTO stage_health (stage, pid, heartbeat_at, processed, failures, in_flight,"
                " last_error, status, last_work_at, loops) VALUES (?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (stage) DO UPDATE SET pid = excluded.pid,"
                " heartbeat_at = excluded.heartbeat_at, processed = excluded.processed,"
                " failures = excluded.failures, in_flight = excluded.in_flight,"
                " last_error = excluded.last_error, status = excluded.status,"
                " last_work_at = excluded.last_work_at, loops = excluded.loops",
                (
                    health.actor,
                    health.pid,
                    now,
                    health.processed,
                    health.failures,
                    health.in_flight,
                    health.last_error[:500],
                    state,
                    health.last_work_at,
                    loops,
                ),
            )
        )

    def stages(self) -> tuple[StageRecord, ...]:
        """Every actor's last recorded health."""
        with self._db.read() as tx:
            rows = tx.all("SELECT * FROM stage_health ORDER BY stage")
        return tuple(_stage(r) for r in rows)
