"""Per-study, per-stage spans from the ledger's audit trail, as a pyarrow Table and Parquet.

Each stage appends an audit event when it moves a job on (``core.types.AuditEventType``), with
the ledger's wall clock (``AuditEntry.at``). A stage's span runs from the previous recorded step
of the same job to its own event:

========== ================================ ===========================================
stage      ends at                          starts at
========== ================================ ===========================================
receive    the last instance received       the first instance received (intake rows)
assemble   ``study_complete``               the last instance received
validate   ``validated`` / ``quarantined``  ``study_complete``
route      ``routed`` / ``skipped``         ``validated``
link       ``linked``                       ``routed``
infer      the last ``inferred``            ``linked`` (or ``routed``, priors off)
write      ``sr_built``                     the last ``inferred``
deliver    the last ``sr_delivered``        ``sr_built``
========== ================================ ===========================================

Plus one ``send`` row per study from the load generator (``job_id`` null; its ``outcome`` is
``sent`` or the error), on the same machine's clock: send start to the last acknowledgement.

Each span includes the wait for the stage to lease the job (queueing) and the work. A stage
whose event is missing (a skipped job has no ``infer``) has no row. One more row per delivered
job, ``archive_to_sr``: from the last instance received to the last SR stored in the PACS.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "ARCHIVE_TO_SR",
    "JobTrail",
    "SCHEMA",
    "SEND",
    "STAGES",
    "Span",
    "read_trails",
    "send_spans",
    "stage_spans",
    "to_table",
    "write_parquet",
]

STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("assemble", ("study_complete",)),
    ("validate", ("validated", "quarantined")),
    ("route", ("routed", "skipped")),
    ("link", ("linked",)),
    ("infer", ("inferred",)),
    ("write", ("sr_built",)),
    ("deliver", ("sr_delivered",)),
)
"""Each stage after ``receive`` and the audit event types that end it (the first one found)."""

ARCHIVE_TO_SR = "archive_to_sr"
"""The end-to-end row: last instance received to the last SR stored."""

SEND = "send"
"""The load generator's row: the study's first send to its last acknowledgement."""

SCHEMA = pa.schema(
    [
        ("study_uid", pa.string()),
        ("job_id", pa.int64()),
        ("family", pa.string()),
        ("priority", pa.int64()),
        ("stage", pa.string()),
        ("start_ts", pa.float64()),
        ("end_ts", pa.float64()),
        ("duration_s", pa.float64()),
        ("outcome", pa.string()),
    ]
)
"""The columns of ``spans.parquet`` (times: Unix seconds, the ledger's clock)."""


@dataclass(frozen=True, slots=True)
class JobTrail:
    """What the ledger holds about one job, as plain values.

    Attributes:
        study_uid: The study.
        job_id: The job.
        priority: Its leasing priority.
        state: Its state when read (the span rows' ``outcome``).
        received: When each of its instances arrived.
        events: ``(type, at, sop_instance_uid, detail)`` of its audit events.
    """

    study_uid: str
    job_id: int
    priority: int
    state: str
    received: tuple[float, ...]
    events: tuple[tuple[str, float, str, Mapping[str, Any]], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Span:
    """One stage of one job."""

    study_uid: str
    job_id: int | None
    family: str
    priority: int
    stage: str
    start_ts: float
    end_ts: float
    outcome: str

    @property
    def duration_s(self) -> float:
        """End minus start."""
        return self.end_ts - self.start_ts


def _last(trail: JobTrail, types: Sequence[str]) -> float | None:
    """When the job's last event of the first of ``types`` present happened; job-level events
    (no SOP Instance UID) win over per-instance ones of the same type."""
    for kind in types:
        found = [(sop, at) for t, at, sop, _ in trail.events if t == kind]
        if found:
            job_level = [at for sop, at in found if not sop]
            return max(job_level or [at for _, at in found])
    return None


def _family(trail: JobTrail) -> str:
    families: set[str] = set()
    for kind, _, _, detail in trail.events:
        if kind == "routed":
            families.update(str(f) for f in detail.get("families", ()))
    return ",".join(sorted(families))


def stage_spans(trail: JobTrail) -> list[Span]:
    """The spans of one job (see the module docstring); none before its first instance."""
    if not trail.received:
        return []
    family, out = _family(trail), []

    def span(stage: str, start: float, end: float) -> Span:
        return Span(trail.study_uid, trail.job_id, family, trail.priority, stage, start, end, trail.state)

    first, last = min(trail.received), max(trail.received)
    out.append(span("receive", first, last))
    previous = last
    for stage, types in STAGES:
        at = _last(trail, types)
        if at is not None:
            out.append(span(stage, previous, max(at, previous)))
            previous = max(at, previous)
    delivered = _last(trail, ("sr_delivered",))
    if delivered is not None:
        out.append(span(ARCHIVE_TO_SR, last, delivered))
    return out


def send_spans(records: Iterable[Any]) -> list[Span]:
    """One ``send`` span per :class:`~benchmarks.harness.load.SendRecord`."""
    return [
        Span(r.study_uid, None, r.family, 0, SEND, r.start_ts, r.end_ts, "sent" if r.ok else f"failed: {r.error}")
        for r in records
    ]


def to_table(spans: Iterable[Span]) -> pa.Table:
    """The spans as a pyarrow Table of :data:`SCHEMA`."""
    rows = list(spans)
    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for s in rows:
        for name in SCHEMA.names:
            columns[name].append(s.duration_s if name == "duration_s" else getattr(s, name))
    return pa.table(columns, schema=SCHEMA)


def write_parquet(table: pa.Table, path: Path) -> Path:
    """Write ``table`` to ``path`` (Parquet, zstd) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    return path


def read_trails(ledger: Any, study_uids: Iterable[str]) -> list[JobTrail]:
    """Every job of each study, read from a ``state.ledger.Ledger``."""
    out = []
    for uid in study_uids:
        events = ledger.audit.events(uid, limit=1_000_000)
        for job in ledger.jobs.for_study(uid):
            out.append(
                JobTrail(
                    uid,
                    job.job_id,
                    job.priority,
                    job.state.value,
                    tuple(i.received_at for i in ledger.intake.job_instances(job.job_id)),
                    tuple((e.type, e.at, e.sop_instance_uid, e.detail) for e in events if e.job_id == job.job_id),
                )
            )
    return out
