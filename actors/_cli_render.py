"""How ``pacsai`` shows things: the status tables, quarantine entries, review flags, model
cards and rollout changes, times, and the example at the end of each command's ``--help`` (kept
apart from the commands)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from actors.deployer import MODELS, ModelDeployer
from core.codec import to_jsonable
from core.quarantine import QuarantineEntry
from core.review import FlagState, ReviewFlag
from core.rollout import ModelCardReport, RolloutState, VersionCard
from core.status import LedgerStatus

__all__ = [
    "EXAMPLES",
    "entry_json",
    "format_entry",
    "format_flag",
    "format_rollout",
    "render_card",
    "render_status",
    "when",
]

EXAMPLES: dict[str, str] = {
    "pacsai": "pacsai status --config configs/default.yaml\n  pacsai --verbose up --config configs/default.yaml",
    "pacsai up": "pacsai up --config configs/default.yaml",
    "pacsai status": "pacsai status --config configs/default.yaml\n  pacsai status --json | jq .queue_depth",
    "pacsai check-config": "pacsai check-config configs/prod.yaml",
    "pacsai models": "pacsai models list --config configs/default.yaml",
    "pacsai models deploy": "pacsai models deploy chest_xray --config configs/default.yaml",
    "pacsai models remove": "pacsai models remove chest_xray --config configs/default.yaml",
    "pacsai models list": "pacsai models list --config configs/default.yaml",
    "pacsai models show": "pacsai models show chest_xray\n  pacsai models show chest_xray --json | jq .live",
    "pacsai models promote": "pacsai models promote chest_xray 2.0.0 --reason 'canary agreed for 4 weeks'",
    "pacsai models rollback": "pacsai models rollback chest_xray 1.4.0 --reason 'false positives on portable films'",
    "pacsai ai": "pacsai ai off --modality CT --reason 'scanner recalibration' --user ann",
    "pacsai replay": "pacsai replay 42 --user ann",
    "pacsai audit": "pacsai audit verify\n  pacsai audit verify --head /mnt/audit-heads/chain-head.json\n  pacsai audit show --study 1.2.840.99.1 --limit 50\n  pacsai audit keygen --out /etc/pacsai/audit-key.pem",
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
        deploying = ModelDeployer.deploying(h) if h.actor == MODELS else []
        failed = [f"{lp.name}: {lp.last_error}" for lp in h.loops if lp.last_error] if h.actor == MODELS else []
        notes = "; ".join(
            ([f"stopped: {', '.join(dead)}"] if dead else [])
            + ([f"deploying: {', '.join(deploying)}"] if deploying else [])
            + failed
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


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def format_rollout(state: RolloutState, action: str) -> str:
    """A promote or rollback as done: the live version, who, and what is halted now."""
    live = state.live
    lines = [
        f"{state.family}: {live.version} is live ({action} by {live.actor})" if live else f"{state.family}: {action}"
    ]
    lines += [
        f"  halted {h.version} ({h.cause.value} by {h.actor}{': ' + h.reason if h.reason else ''})"
        for h in state.halted
    ]
    return "\n".join(lines)


def _versions_table(card: ModelCardReport) -> Table:
    t = Table(title=f"{card.family} versions", box=box.SIMPLE_HEAD, title_justify="left", show_edge=False)
    for name in ("version", "name", "traffic now", "deployed", "application"):
        t.add_column(name, overflow="fold")
    for name in ("studies", "positive", "shadow n", "shadow agreement"):
        t.add_column(name, justify="right")
    for v in card.versions:
        deployed = "?" if v.deployed is None else ("yes" if v.deployed else "NO")
        shadow = v.observed.shadow
        t.add_row(
            Text(v.version, style="bold green" if v.live else ""),
            v.name,
            Text(v.traffic_now, style="red" if v.halted else ""),
            Text(deployed, style="red" if v.deployed is False else ""),
            v.application,
            str(v.observed.studies),
            _rate(v.observed.positive_rate),
            str(shadow.n) if shadow else "-",
            _rate(shadow.agreement_rate) if shadow else "-",
        )
    return t


def _version_lines(v: VersionCard) -> Iterator[str]:
    """One version's declared card and what the site observed (plain text: scripts grep it)."""
    yield f"{v.version}{' (live)' if v.live else ''}: {v.name}"
    c = v.card
    for label, value in (
        ("description", c.description),
        ("intended use", c.intended_use),
        ("training data", c.training_data),
        ("performance claims", c.performance),
        ("licence", c.license),
        ("authors", c.authors),
        ("references", "; ".join(c.references)),
    ):
        yield f"  {label}: {value or 'not declared'}"
    t = v.traffic
    yield f"  traffic when not live: {t.mode}" + (f" {t.percent:g}%" if t.mode == "canary" else "")
    if v.halted is not None:
        h = v.halted
        yield f"  halted: {h.cause.value} by {h.actor} at {when(h.at)}" + (f": {h.reason}" if h.reason else "")
    o = v.observed
    yield f"  observed: {o.studies} studies, {o.results} results, positive {_rate(o.positive_rate)}"
    if o.positive_rate_by_finding:
        yield "  positive by finding: " + ", ".join(f"{k} {_rate(r)}" for k, r in o.positive_rate_by_finding.items())
    if o.shadow is not None:
        s = o.shadow
        yield (
            f"  shadow: {s.n} studies against {', '.join(s.live_versions) or '-'}, agreement "
            f"{_rate(s.agreement_rate)}, mean |delta| {'-' if s.mean_abs_delta is None else f'{s.mean_abs_delta:.3f}'}"
        )
        for f in s.findings:
            yield f"    {f.key}: agreement {_rate(f.agreement_rate)}, mean |delta| {f.mean_abs_delta:.3f} (n {f.n})"
    yield f"  agreement with readers: {_rate(o.reader_agreement) if o.reader_agreement is not None else o.reader_agreement_note}"


def render_card(card: ModelCardReport) -> RenderableType:
    """``pacsai models show``: who made which version live, the versions, each one's card."""
    live = card.live_set
    head = f"{card.family}: live {card.live}" + (
        f" (set by {live.actor} at {when(live.at)}{': ' + live.reason if live.reason else ''})"
        if live
        else " (the configured version)"
    )
    lines = [line for v in card.versions for line in (*_version_lines(v), "")]
    return Group(Text(head, style="bold"), _versions_table(card), *(Text(line) for line in lines))
