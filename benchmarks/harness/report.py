"""The run's report: ``summary.json`` (numbers) and ``report.png`` (four panels).

Panels: throughput over time (studies sent and finished per second), latency CDF per stage,
queue depth per working state over time, and RUNNING replicas per model family over time.
Times on the x axes are seconds since the first study was sent.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness.load import SendRecord
from benchmarks.harness.record import cdf, commit, device, percentiles
from benchmarks.harness.sampler import WORKING, Sample
from benchmarks.harness.spans import ARCHIVE_TO_SR, SEND, STAGES, Span

__all__ = ["finish_times", "plot", "stage_stats", "summarise", "write_summary"]

STAGE_ORDER = (SEND, "receive", *(name for name, _ in STAGES), ARCHIVE_TO_SR)
NEXT_STAGE = {
    "receiving": "assemble",
    "complete": "validate",
    "validated": "route",
    "routed": "link",
    "linked": "infer",
    "inferred": "write",
    "written": "deliver",
}
"""Which stage a job in each working state waits for."""


def finish_times(spans: Sequence[Span]) -> dict[str, float]:
    """When each study's work ended: the latest span end of its jobs."""
    out: dict[str, float] = {}
    for s in spans:
        if s.job_id is not None:
            out[s.study_uid] = max(out.get(s.study_uid, 0.0), s.end_ts)
    return out


def stage_stats(spans: Sequence[Span]) -> dict[str, dict[str, float]]:
    """Per stage: rows, mean and p50/p95/p99 of the duration in seconds (stages in pipeline order)."""
    by_stage: dict[str, list[float]] = {}
    for s in spans:
        by_stage.setdefault(s.stage, []).append(s.duration_s)
    order = [st for st in STAGE_ORDER if st in by_stage] + sorted(set(by_stage) - set(STAGE_ORDER))
    return {
        st: {"n": len(by_stage[st]), "mean_s": round(sum(by_stage[st]) / len(by_stage[st]), 4)}
        | {f"{k}_s": v for k, v in percentiles(by_stage[st]).items()}
        for st in order
    }


def _outcomes(spans: Sequence[Span]) -> dict[str, int]:
    """Studies per state of their latest job."""
    latest: dict[str, tuple[int, str]] = {}
    for s in spans:
        if s.job_id is not None and s.job_id >= latest.get(s.study_uid, (-1, ""))[0]:
            latest[s.study_uid] = (s.job_id, s.outcome)
    counts: dict[str, int] = {}
    for _, outcome in latest.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return dict(sorted(counts.items()))


def summarise(
    sends: Sequence[SendRecord],
    spans: Sequence[Span],
    samples: Sequence[Sample],
    baselines: Mapping[str, Any] | None,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """The numbers of one run (``summary.json``).

    ``duration_s`` runs from the first send to the end of the last study's work;
    ``throughput_studies_per_s`` counts studies whose work ended (any terminal state) in it.
    """
    start = min((r.start_ts for r in sends), default=0.0)
    sent_end = max((r.end_ts for r in sends), default=start)
    finished = finish_times(spans)
    end = max([*finished.values(), sent_end])
    duration = end - start
    instances = sum(r.instances for r in sends if r.ok)
    archive = [s.duration_s for s in spans if s.stage == ARCHIVE_TO_SR]
    ingest = instances / (sent_end - start) if sent_end > start else 0.0
    out: dict[str, Any] = {
        "name": "bench",
        "studies": len(sends),
        "studies_sent_ok": sum(r.ok for r in sends),
        "studies_finished": len(finished),
        "jobs": len({s.job_id for s in spans if s.job_id is not None}),
        "send_errors": sorted({r.error for r in sends if not r.ok})[:5],
        "instances": instances,
        "final_states": _outcomes(spans),
        "duration_s": round(duration, 3),
        "throughput_studies_per_s": round(len(finished) / duration, 4) if duration > 0 else 0.0,
        "send_s": round(sent_end - start, 3),
        "ingest_inst_per_s": round(ingest, 1),
        "send_per_study_s": {k: round(v, 4) for k, v in percentiles([r.end_ts - r.start_ts for r in sends]).items()},
        "stages": stage_stats(spans),
        "archive_to_sr_s": percentiles(archive),
        "queue_depth_max": {st: max((s.jobs.get(st, 0) for s in samples), default=0) for st in WORKING},
        "replicas_max": _replicas_max(samples),
        "samples": len(samples),
        "baselines": dict(baselines) if baselines else {},
        **dict(settings),
        "started_at": dt.datetime.fromtimestamp(start, dt.UTC).isoformat(timespec="seconds") if sends else "",
        "device": device(),
        "commit": commit(),
    }
    if out["baselines"].get("bare_scp_inst_per_s"):
        out["baselines"]["pipeline_ingest_to_bare_ratio"] = round(ingest / out["baselines"]["bare_scp_inst_per_s"], 3)
    return out


def _replicas_max(samples: Sequence[Sample]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in samples:
        for family, n in s.replicas.items():
            out[family] = max(out.get(family, 0), n)
    return dict(sorted(out.items()))


def write_summary(summary: Mapping[str, Any], path: Path) -> Path:
    """Write the summary as indented JSON and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def _rate(times: Sequence[float], start: float, end: float, bins: int) -> tuple[list[float], list[float]]:
    """Events per second in ``bins`` equal bins over [start, end] (bin centres, rates)."""
    width = max((end - start) / bins, 1e-9)
    counts = [0] * bins
    for t in times:
        counts[min(bins - 1, max(0, int((t - start) / width)))] += 1
    return [(k + 0.5) * width for k in range(bins)], [c / width for c in counts]


def plot(
    sends: Sequence[SendRecord], spans: Sequence[Span], samples: Sequence[Sample], path: Path, title: str = ""
) -> Path:
    """Draw the four panels into ``path`` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min((r.start_ts for r in sends), default=0.0)
    finished = list(finish_times(spans).values())
    end = max([start + 1.0, *finished, *(r.end_ts for r in sends)])
    bins = max(5, min(60, int(math.ceil(end - start) / 2)))
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    for label, times in (("sent", [r.end_ts for r in sends if r.ok]), ("finished", finished)):
        x, y = _rate(times, start, end, bins)
        ax.step(x, y, where="mid", label=label)
    ax.set(title="Throughput", xlabel="s since first send", ylabel="studies/s")
    ax.legend()
    ax = axes[0][1]
    by_stage: dict[str, list[float]] = {}
    for s in spans:
        by_stage.setdefault(s.stage, []).append(max(s.duration_s, 1e-4))
    for stage in [st for st in STAGE_ORDER if st in by_stage]:
        xs, ys = cdf(by_stage[stage])
        ax.step(xs, ys, where="post", label=stage, linewidth=2.5 if stage == ARCHIVE_TO_SR else 1.2)
    ax.set_xscale("log")
    ax.set(title="Latency CDF per stage", xlabel="seconds (log)", ylabel="fraction of jobs")
    ax.legend(fontsize=8)
    ax = axes[1][0]
    times = [s.at - start for s in samples]
    for state in WORKING:
        label = f"{state} (-> {NEXT_STAGE[state]})" if state in NEXT_STAGE else state
        ax.plot(times, [s.jobs.get(state, 0) for s in samples], label=label)
    ax.set(title="Queue depth (jobs per state)", xlabel="s since first send", ylabel="jobs")
    ax.legend(fontsize=8)
    ax = axes[1][1]
    families = sorted({f for s in samples for f in s.replicas})
    for family in families:
        ax.step(times, [s.replicas.get(family, 0) for s in samples], where="post", label=family)
    ax.set(title="Serve replicas (RUNNING)", xlabel="s since first send", ylabel="replicas")
    ax.set_ylim(bottom=0, top=max([1, *(n for s in samples for n in s.replicas.values())]) + 0.5)
    if families:
        ax.legend(fontsize=8)
    fig.suptitle(title or "pacsai bench")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
