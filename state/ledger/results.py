"""Our AI results per study: SR versions, the state of each one's delivery, our own series.

An SR version's delivery state (``core.versions.VersionState``) lives on its ``sr_results``
row. ``claim_delivery`` reads every version of a study and family under a row lock, lets the
caller's plan (``core.versions.plan_delivery``) decide, and applies it in the same transaction,
so two delivery workers never both send a version of one study and family.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from core.alert_policy import OrderPriority
from core.audit import AuditEvent
from core.job import Job
from core.ledger import MarkSrVersions, RecordSrVersions
from core.results import DeliveryClaim, SrVersion
from core.review_submissions import verified_series_uid
from core.types import AuditEventType, JobState
from core.versions import DeliveryAction, DeliveryPlan, SRVersion, VersionState
from state.db import Database, Row, Tx, marks
from state.ledger._codec import RecordCodec
from state.ledger.audit import append_events
from state.ledger.clinical import apply_alert_items

__all__ = ["Results", "apply_mark", "apply_versions"]

_ON_ITS_WAY = tuple(
    s.value
    for s in (
        JobState.RECEIVING,
        JobState.COMPLETE,
        JobState.VALIDATED,
        JobState.ROUTED,
        JobState.LINKED,
        JobState.INFERRED,
    )
)
"""States of a newer job version of a study that will still write an SR (``PLANNED``)."""
_NOT_RESULTS = (VersionState.SUPERSEDED.value, VersionState.ABANDONED.value)


def apply_versions(
    tx: Tx,
    effect: RecordSrVersions,
    predictions: Sequence[str],
    now: float,
    order_priority: OrderPriority | None = None,
) -> None:
    """Record SR versions (once each; a rebuilt one keeps its row) with their predictions as
    encoded by ``RecordCodec.dump_prediction``, in order, and their alert items (readers'
    worklists and pushes, issue 12) with the order's priority (``core.clinical.order_priority_of``)."""
    tx.executemany(
        "INSERT INTO sr_results (sop_instance_uid, sop_class_uid, series_uid, study_uid, job_id,"
        " job_version, family, model_name, model_version, predecessor_uid, prediction,"
        " created_at, state, incomplete, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT (sop_instance_uid) DO NOTHING",
        [
            (
                v.sop_instance_uid,
                v.sop_class_uid,
                v.series_instance_uid,
                v.study_uid,
                v.job_id,
                v.job_version,
                v.family,
                v.model_name,
                v.model_version,
                v.predecessor_uid,
                prediction,
                now,
                v.state.value,
                int(v.incomplete),
                now,
            )
            for v, prediction in zip(effect.versions, predictions, strict=True)
        ],
    )
    apply_alert_items(tx, effect.versions, order_priority, now)


def apply_mark(tx: Tx, effect: MarkSrVersions, now: float) -> None:
    """Set the delivery state of some SR versions of one study and family."""
    if effect.versions:
        tx.execute(
            f"UPDATE sr_results SET state = ?, updated_at = ? WHERE study_uid = ? AND family = ?"
            f" AND job_version IN ({marks(len(effect.versions))})",
            (effect.state.value, now, effect.study_uid, effect.family, *effect.versions),
        )


def _plan_views(tx: Tx, study_uid: str, family: str, own: int) -> list[SRVersion]:
    """Every version as ``plan_delivery`` sees it (locked on PostgreSQL).

    The claiming job's own version, if left ``SENDING`` by an interrupted attempt, is sent again
    (the SOP Instance UID is the same); a version whose job died is ``ABANDONED``; a newer job
    version of the study still on its way is ``PLANNED``.
    """
    rows = tx.all(
        "SELECT r.job_version, r.state, r.sop_instance_uid, r.predecessor_uid,"
        " r.incomplete, j.state AS job_state FROM sr_results r JOIN jobs j"
        " ON j.job_id = r.job_id WHERE r.study_uid = ? AND r.family = ?"
        " ORDER BY r.job_version" + (tx.for_update and tx.for_update + " OF r"),
        (study_uid, family),
    )
    views = []
    for r in rows:
        state = VersionState(r["state"])
        if int(r["job_version"]) == own and state is VersionState.SENDING:
            state = VersionState.PENDING
        elif r["job_state"] == JobState.DEAD.value and state in (VersionState.PENDING, VersionState.SENDING):
            state = VersionState.ABANDONED
        views.append(
            SRVersion(int(r["job_version"]), state, r["sop_instance_uid"], r["predecessor_uid"], bool(r["incomplete"]))
        )
    known = {v.version for v in views}
    newer = tx.all(
        f"SELECT version, state FROM jobs WHERE study_uid = ? AND version > ?"
        f" AND state IN ({marks(len(_ON_ITS_WAY) + 1)})",
        (study_uid, own, *_ON_ITS_WAY, JobState.DEAD.value),
    )
    for j in newer:
        if int(j["version"]) not in known:
            dead = j["state"] == JobState.DEAD.value
            views.append(SRVersion(int(j["version"]), VersionState.ABANDONED if dead else VersionState.PLANNED))
    return views


def _superseded_events(plan: DeliveryPlan, job: Job, family: str, actor: str) -> list[AuditEvent]:
    by = plan.version.version if plan.version is not None else None
    return [
        AuditEvent(
            AuditEventType.SR_VERSION_SUPERSEDED,
            actor,
            job.study_instance_uid,
            job_id=job.job_id,
            detail={"family": family, "version": n, "superseded_by": by, "reason": plan.reason},
        )
        for n in plan.supersede
    ]


class Results:
    """SR versions and their delivery states, our own series."""

    def __init__(self, db: Database, codec: RecordCodec) -> None:
        self._db = db
        self._codec = codec

    def _version(self, row: Row) -> SrVersion:
        return SrVersion(
            row["sop_instance_uid"],
            row["sop_class_uid"],
            row["series_uid"],
            row["study_uid"],
            int(row["job_id"]),
            int(row["job_version"]),
            row["family"],
            row["model_name"],
            row["model_version"],
            row["predecessor_uid"],
            self._codec.load_prediction(row["prediction"]),
            float(row["created_at"]),
            VersionState(row["state"]),
            bool(row["incomplete"]),
        )

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

    def version(self, sop_instance_uid: str) -> SrVersion | None:
        """One SR version by its SOP Instance UID."""
        with self._db.read() as tx:
            row = tx.one("SELECT * FROM sr_results WHERE sop_instance_uid = ?", (sop_instance_uid,))
        return self._version(row) if row is not None else None

    def latest(self, study_uid: str, family: str, before_version: int | None = None) -> SrVersion | None:
        """The newest SR of a study and family that is (or will be) a result: superseded and
        abandoned versions are left out (of a job version below ``before_version``)."""
        rows = [
            v
            for v in self.versions(study_uid, family)
            if v.state.value not in _NOT_RESULTS and (before_version is None or v.job_version < before_version)
        ]
        return rows[-1] if rows else None

    def claim_delivery(
        self,
        job: Job,
        family: str,
        plan: Callable[[list[SRVersion]], DeliveryPlan],
        actor: str,
        now: float,
    ) -> DeliveryClaim:
        """Plan the delivery of the job's SR version of ``family`` and apply the plan atomically.

        Superseded versions (of any job) are marked and audited; the job's own version becomes
        ``SENDING`` when the plan sends it, ``HELD`` when it holds it.

        Returns:
            The plan and the job's own version's state afterwards.
        """

        def apply(tx: Tx) -> DeliveryClaim:
            views = _plan_views(tx, job.study_instance_uid, family, job.version)
            decided = plan(views)
            apply_mark(
                tx, MarkSrVersions(job.study_instance_uid, family, decided.supersede, VersionState.SUPERSEDED), now
            )
            own = next((v.state for v in views if v.version == job.version), VersionState.ABANDONED)
            mine = decided.version is not None and decided.version.version == job.version
            moves = {DeliveryAction.SEND: VersionState.SENDING, DeliveryAction.HOLD: VersionState.HELD}
            if job.version in decided.supersede:
                own = VersionState.SUPERSEDED
            elif mine and decided.action in moves:
                own = moves[decided.action]
                apply_mark(tx, MarkSrVersions(job.study_instance_uid, family, (job.version,), own), now)
            append_events(tx, _superseded_events(decided, job, family, actor), now)
            return DeliveryClaim(decided, own)

        return self._db.run(apply)

    def rebuilt(self, sop_instance_uid: str, predecessor_uid: str, incomplete: bool, now: float) -> None:
        """Record that a version was rebuilt naming another predecessor (or marked partial)."""
        self._db.run(
            lambda tx: tx.execute(
                "UPDATE sr_results SET predecessor_uid = ?, incomplete = ?, updated_at = ? WHERE sop_instance_uid = ?",
                (predecessor_uid, int(incomplete), now, sop_instance_uid),
            )
        )

    def release_send(self, sop_instance_uid: str, now: float) -> None:
        """A send failed: the version waits again (``PENDING``) so the plan is made afresh."""
        self._db.run(
            lambda tx: tx.execute(
                "UPDATE sr_results SET state = ?, updated_at = ? WHERE sop_instance_uid = ? AND state = ?",
                (VersionState.PENDING.value, now, sop_instance_uid, VersionState.SENDING.value),
            )
        )

    def held(self) -> int:
        """SR versions held at the cap, waiting for an operator (``pacsai status``)."""
        with self._db.read() as tx:
            row = tx.one("SELECT COUNT(*) AS n FROM sr_results WHERE state = ?", (VersionState.HELD.value,))
        return int(row["n"]) if row else 0

    def own_series(self, study_uid: str) -> set[str]:
        """Series of the study that hold our own results (SRs, Parametric Maps, key images, and
        the readers' verified SRs, whose series derives from the AI SR's)."""
        with self._db.read() as tx:
            ai = {
                r["series_uid"] for r in tx.all("SELECT series_uid FROM sr_results WHERE study_uid = ?", (study_uid,))
            }
            rows = tx.all(
                "SELECT o.series_uid FROM outbox o JOIN jobs j ON j.job_id = o.job_id"
                " WHERE j.study_uid = ? AND o.series_uid != ''",
                (study_uid,),
            )
        return ai | {r["series_uid"] for r in rows} | {verified_series_uid(s) for s in ai}
