"""How ``pacsai`` shows things: the status tables, quarantine entries, review flags, times,
and the example at the end of each command's ``--help`` (kept apart from the commands)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from core.codec import to_jsonable
from core.quarantine import QuarantineEntry
from core.review import FlagState, ReviewFlag
from core.status import LedgerStatus

__all__ = ["EXAMPLES", "entry_json", "format_entry", "format_flag", "render_status", "when"]

EXAMPLES: dict[str, str] = {
    "pacsai": "pacsai status --config configs/default.yaml\n  pacsai --verbose up --config configs/default.yaml",
    "pacsai up": "pacsai up --config configs/default.yaml",
    "pacsai status": "pacsai status --config configs/default.yaml\n  pacsai status --json | jq .queue_depth",
    "pacsai check-config": "pacsai check-config configs/prod.yaml",
    "pacsai models": "pacsai models list --config configs/default.yaml",
    "pacsai models deploy": "pacsai models deploy chest_xray --config configs/default.yaml",
    "pacsai models remove": "pacsai models remove chest_xray --config configs/default.yaml",
    "pacsai models list": "pacsai models list --config configs/default.yaml",
    "pacsai ai": "pacsai ai off --modality CT --reason 'scanner recalibration' --user ann",
    "pacsai replay": "pacsai replay 42 --user ann",
    "pacsai audit": "pacsai audit verify\n  pacsai audit show --study 1.2.840.99.1 --limit 50",
    "pacsai quarantine": "pacsai quarantine list",
    "pacsai quarantine list": "pacsai quarantine list --state all --limit 20",
    "pacsai quarantine show": "pacsai quarantine show Q7 --json",
    "pacsai quarantine release": "pacsai quarantine release Q7 --reason 'HighBit checked with the vendor'",
    "pacsai quarantine discard": "pacsai quarantine discard Q7 --reason 'empty test shot'",
    "pacsai review": "pacsai review list",
    "pacsai review list": "pacsai review list --kind prior_issuer_mismatch",
    "pacsai review show": "pacsai review show R3",
    "pacsai review resolve": "pacsai review resolve R3 --resolution acknowledged --reason 'seen' --user rita",
    "pacsai tokens": "pacsai tokens list",
    "pacsai tokens create": "pacsai tokens create ris-gateway --scope ingest --expires-in-days 90",
    "pacsai tokens list": "pacsai tokens list --all",
    "pacsai tokens revoke": "pacsai tokens revoke pab_1a2b3c4d",
}


def _counts_table(title: str, counts: dict[str, int] | Any) -> Table:
    t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", show_edge=False)
    t.add_column("state")
    t.add_column("n", justify="right")
    for state, n in counts.items():
        t.add_row(state, str(n), style=None if n else "dim")
    return t


def _summary(report: LedgerStatus) -> Iterator[str]:
    """The one-line facts under the tables (plain text: scripts and tests grep them)."""
    yield f"queue depth: {report.queue_depth}   outbox pending: {report.outbox_pending}"
    q = report.quarantine
    codes = ", ".join(f"{c} {n}" for c, n in q.held_by_code.items())
    yield (
        f"quarantine: held {q.held}"
        + (f" ({codes})" if codes else "")
        + f", released {q.released}, discarded {q.discarded}"
        + ("   -> pacsai quarantine list" if q.held else "")
    )
    if report.review_flags_open:
        kinds = ", ".join(f"{k} {n}" for k, n in report.review_flags_by_kind.items())
        yield f"for review: {report.review_flags_open} ({kinds})   -> pacsai review list"
    if report.sr_versions_held:
        yield (
            f"WARNING: {report.sr_versions_held} SR version(s) held at sr.max_versions; "
            "release or acknowledge with pacsai review resolve"
        )
    if report.senders_tightened:
        tightened = ", ".join(f"{ae} (strictness {n})" for ae, n in report.senders_tightened.items())
        yield f"senders completing studies early, rules tightened: {tightened}"
    oldest = report.oldest_waiting
    if oldest:
        yield (
            f"oldest waiting: job {oldest.job_id} ({oldest.state}, {oldest.age_s:.1f} s)"
            + (f": {oldest.reason}" if oldest.reason else "")
        )


def _stages_table(report: LedgerStatus, now: float) -> Table:
    t = Table(title="stages", box=box.SIMPLE_HEAD, title_justify="left", show_edge=False)
    for name, justify in (("stage", "left"), ("health", "left"), ("processed", "right"), ("failures", "right")):
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for name in ("in flight", "last work"):
        t.add_column(name, justify="right")
    t.add_column("notes", overflow="fold")
    for s in report.stages:
        h, age = s.health, now - s.heartbeat_at
        health = s.status.value if age < 10 else f"STALE ({age:.0f} s)"
        style = "green" if health == "ok" else "red"
        dead = [loop.name for loop in h.loops if not loop.alive]
        notes = "; ".join(
            ([f"stopped: {', '.join(dead)}"] if dead else [])
            + ([f"last error: {h.last_error}"] if h.last_error else [])
        )
        t.add_row(
            h.actor,
            Text(health, style=style),
            str(h.processed),
            str(h.failures),
            str(h.in_flight),
            f"{now - h.last_work_at:.0f} s ago" if h.last_work_at else "-",
            Text(notes),
        )
    return t


def render_status(report: LedgerStatus, now: float) -> RenderableType:
    """``pacsai status`` as tables: jobs and instances per state, the facts, the stages."""
    counts = Table.grid(padding=(0, 4))
    counts.add_row(_counts_table("jobs", report.jobs), _counts_table("instances", report.instances))
    facts = [Text(line, style="bold red" if line.startswith("WARNING") else "") for line in _summary(report)]
    return Group(counts, *facts, Text(""), _stages_table(report, now))


def format_entry(e: QuarantineEntry, verbose: bool = False) -> str:
    head = f"{e.id:<6} {e.state.value:<9} {e.modality or '-':<4} {e.sop_instance_uid}  [{', '.join(e.codes)}]"
    if not verbose:
        return head
    lines = [
        head,
        f"  study  {e.study_uid}",
        f"  series {e.series_uid}",
        f"  file   {e.path} ({e.size} bytes, sha256 {e.sha256})",
        f"  from   {e.calling_ae or '-'} in {e.transfer_syntax or '-'}",
        f"  job    {e.job_id}",
    ]
    lines += [f"  - {r.code} ({r.level}): {r.message}" for r in e.reasons]
    if e.decided_by:
        lines.append(
            f"  {e.state.value} by {e.decided_by}: {e.decision_reason}"
            + (f" (accepted: {', '.join(e.accepted_codes)})" if e.accepted_codes else "")
        )
    return "\n".join(lines)


def entry_json(e: QuarantineEntry) -> dict[str, Any]:
    return {"id": e.id, **to_jsonable(e)}


def format_flag(f: ReviewFlag, verbose: bool = False) -> str:
    head = (
        f"R{f.flag_id:<5} {f.state.value:<8} {f.kind.value:<24} {f.study_uid}"
        + (f"  other {f.other_study_uid}" if f.other_study_uid else "")
        + (f"  [{f.subject}]" if f.subject else "")
    )
    if not verbose:
        return head
    lines = [
        head,
        f"  raised {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(f.raised_at))}"
        + (f" by job {f.job_id}" if f.job_id is not None else ""),
    ]
    lines += [f"  {k}: {v}" for k, v in sorted(f.detail.items())]
    if f.state is FlagState.RESOLVED:
        lines.append(f"  {f.resolution} by {f.resolved_by}: {f.reason}")
    return "\n".join(lines)


def when(epoch: float | None) -> str:
    return "never" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
