"""The pure parts of ``pacsai bench`` (benchmarks.harness): percentiles, spans, summary, report."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from benchmarks.harness.cli import EXAMPLE, build_parser
from benchmarks.harness.load import KINDS, MixEntry, SendRecord, parse_mix, plan
from benchmarks.harness.record import cdf, percentile, percentiles, process_cpu_s
from benchmarks.harness.report import plot, stage_stats, summarise, write_summary
from benchmarks.harness.sampler import Sample, Sampler
from benchmarks.harness.spans import (
    ARCHIVE_TO_SR,
    SCHEMA,
    SEND,
    JobTrail,
    send_spans,
    stage_spans,
    to_table,
    write_parquet,
)

T0 = 1_700_000_000.0


def delivered_trail(uid: str = "1.2.3", job_id: int = 7, t0: float = T0) -> JobTrail:
    """A chest study through every stage: two instances, then one event per stage."""
    events = (
        ("instance_received", t0, "1.2.3.1", {}),
        ("study_complete", t0 + 1.5, "", {"rule": "quiet_period"}),
        ("validated", t0 + 1.6, "1.2.3.1", {"released": True}),  # per instance: the job-level one wins
        ("validated", t0 + 1.7, "", {"valid": 2}),
        ("routed", t0 + 1.8, "", {"families": ["chest_xray"], "priority": 0}),
        ("linked", t0 + 1.9, "", {}),
        ("inferred", t0 + 2.5, "", {"family": "chest_xray"}),
        ("sr_built", t0 + 2.7, "", {}),
        ("sr_delivered", t0 + 3.0, "9.9.1", {"kind": "sr"}),
        ("sr_delivered", t0 + 3.2, "9.9.2", {"kind": "ian"}),
    )
    return JobTrail(uid, job_id, 0, "delivered", (t0, t0 + 0.5), events)


# ---------------------------------------------------------------- percentiles
@pytest.mark.parametrize("n", [2, 3, 10, 101])
def test_percentile_inclusive_matches_statistics(n: int) -> None:
    values = [float((k * 37) % 11) for k in range(n)]
    for q in (1, 50, 95, 99):
        expected = statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        assert percentile(values, q) == pytest.approx(expected)


def test_percentile_methods_keep_the_scripts_numbers() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 50, "nearest") == 3.0  # sorted[int(0.5 * 5)]
    assert percentile(values, 95, "nearest") == 5.0
    assert percentile(values, 95, "rounded") == 5.0  # sorted[round(0.95 * 4)]
    assert percentile(values, 25, "rounded") == 2.0
    assert percentile(values, 50, "exclusive") == statistics.quantiles(values, n=100)[49]
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], 101), ([1.0, 2.0], 50.5)])
def test_percentile_refuses_what_it_cannot_answer(values: list[float], q: float) -> None:
    with pytest.raises(ValueError, match="percentile|expected"):
        percentile(values, q, "exclusive" if q == 50.5 else "inclusive")


def test_percentiles_and_cdf() -> None:
    assert percentiles([]) == {}
    assert percentiles([1.0, 2.0, 3.0], scale=1000) == {"p50": 2000.0, "p95": 2900.0, "p99": 2980.0}
    xs, ys = cdf([3.0, 1.0, 2.0])
    assert xs == [1.0, 2.0, 3.0]
    assert ys == pytest.approx([1 / 3, 2 / 3, 1.0])


# ---------------------------------------------------------------- the mix
def test_parse_mix_defaults_and_errors() -> None:
    assert parse_mix("cxr=3, headct:12") == [MixEntry("cxr", 1, 3.0), MixEntry("headct", 12, 1.0)]
    assert parse_mix("cta")[0].size == KINDS["cta"].default_size
    for bad in ("", "xray", "cxr:0", "cxr=-1", "cxr:big"):
        with pytest.raises(ValueError, match="--mix"):
            parse_mix(bad)


def test_plan_is_seeded_and_follows_the_weights() -> None:
    mix = parse_mix("cxr=9,ct:4=1")
    first = plan(mix, 400, seed=3)
    assert first == plan(mix, 400, seed=3)
    assert first != plan(mix, 400, seed=4)
    share = sum(e.kind == "cxr" for e in first) / len(first)
    assert 0.8 < share < 0.97


# ---------------------------------------------------------------- spans
def test_stage_spans_of_a_delivered_job_chain_end_to_start() -> None:
    spans = stage_spans(delivered_trail())
    assert [s.stage for s in spans] == [
        "receive",
        "assemble",
        "validate",
        "route",
        "link",
        "infer",
        "write",
        "deliver",
        ARCHIVE_TO_SR,
    ]
    by = {s.stage: s for s in spans}
    assert by["receive"].duration_s == pytest.approx(0.5)
    assert by["assemble"].start_ts == T0 + 0.5 and by["assemble"].end_ts == T0 + 1.5
    assert by["validate"].end_ts == T0 + 1.7  # the job-level event, not the instance's
    assert by["deliver"].end_ts == T0 + 3.2  # the last object stored
    assert by[ARCHIVE_TO_SR].duration_s == pytest.approx(2.7)
    for earlier, later in zip(spans[:-2], spans[1:-1], strict=True):
        assert earlier.end_ts == later.start_ts
    assert {s.family for s in spans} == {"chest_xray"}
    assert {s.outcome for s in spans} == {"delivered"}


def test_stage_spans_of_a_skipped_job_stop_at_routing() -> None:
    trail = JobTrail(
        "1.2.4",
        8,
        0,
        "skipped",
        (T0,),
        (("study_complete", T0 + 0.6, "", {}), ("validated", T0 + 0.7, "", {}), ("skipped", T0 + 0.8, "", {})),
    )
    spans = stage_spans(trail)
    assert [s.stage for s in spans] == ["receive", "assemble", "validate", "route"]
    assert all(s.duration_s >= 0 and s.family == "" for s in spans)


def test_stage_spans_never_go_backwards_and_need_instances() -> None:
    early = JobTrail("1.2.5", 9, 0, "delivered", (T0 + 5,), (("study_complete", T0 + 1, "", {}),))
    [receive, assemble] = stage_spans(early)
    assert assemble.duration_s == 0.0
    assert stage_spans(JobTrail("1.2.6", 10, 0, "receiving", ())) == []


def test_spans_table_round_trips_through_parquet(tmp_path: Path) -> None:
    spans = stage_spans(delivered_trail()) + stage_spans(delivered_trail("1.2.9", 11, T0 + 10))
    path = write_parquet(to_table(spans), tmp_path / "out" / "spans.parquet")
    table = pq.read_table(path)
    assert table.schema.equals(SCHEMA)
    assert table.num_rows == len(spans)
    assert sorted(set(table.column("study_uid").to_pylist())) == ["1.2.3", "1.2.9"]
    assert min(table.column("duration_s").to_pylist()) >= 0


# ---------------------------------------------------------------- summary and report
def sends() -> list[SendRecord]:
    return [
        SendRecord(0, "1.2.3", "cxr", "chest_xray", 2, T0 - 0.2, T0 + 0.6, True),
        SendRecord(1, "1.2.9", "cxr", "chest_xray", 2, T0 + 9.8, T0 + 10.6, True),
    ]


def samples() -> list[Sample]:
    return [
        Sample(T0, {"linked": 1, "delivered": 0}, {"chest_xray": 1}),
        Sample(T0 + 1, {"linked": 3, "delivered": 1}, {"chest_xray": 2}),
    ]


def test_stage_stats_are_in_pipeline_order() -> None:
    stats = stage_stats(stage_spans(delivered_trail()))
    assert list(stats)[:2] == ["receive", "assemble"] and list(stats)[-1] == ARCHIVE_TO_SR
    assert stats["infer"] == {"n": 1, "mean_s": 0.6, "p50_s": 0.6, "p95_s": 0.6, "p99_s": 0.6}


def test_send_spans_carry_the_outcome() -> None:
    failed = SendRecord(2, "1.2.10", "ct", "", 5, T0, T0 + 1, False, "C-STORE status 0xA700")
    spans = send_spans([*sends(), failed])
    assert [s.stage for s in spans] == [SEND] * 3 and {s.job_id for s in spans} == {None}
    assert [s.outcome for s in spans] == ["sent", "sent", "failed: C-STORE status 0xA700"]
    assert to_table(spans).column("job_id").null_count == 3


def test_summary_numbers(tmp_path: Path) -> None:
    spans = send_spans(sends()) + stage_spans(delivered_trail()) + stage_spans(delivered_trail("1.2.9", 11, T0 + 10))
    baselines = {"bare_scp_inst_per_s": 4.0, "listener_inst_per_s": 3.0}
    summary = summarise(sends(), spans, samples(), baselines, {"associations": 2})
    assert summary["studies"] == summary["studies_finished"] == summary["jobs"] == 2
    assert summary["send_errors"] == [] and summary["stages"][SEND]["n"] == 2
    assert summary["final_states"] == {"delivered": 2}
    assert summary["duration_s"] == pytest.approx(13.4)  # first send to the last SR stored
    assert summary["throughput_studies_per_s"] == pytest.approx(2 / 13.4, abs=1e-4)
    assert summary["archive_to_sr_s"] == {"p50": 2.7, "p95": 2.7, "p99": 2.7}
    assert summary["ingest_inst_per_s"] == pytest.approx(4 / 10.8, abs=0.05)
    assert summary["queue_depth_max"]["linked"] == 3 and summary["replicas_max"] == {"chest_xray": 2}
    assert summary["baselines"]["pipeline_ingest_to_bare_ratio"] == pytest.approx(0.4 / 4.0, abs=0.01)
    assert summary["associations"] == 2 and summary["commit"] and summary["device"]
    path = write_summary(summary, tmp_path / "summary.json")
    assert json.loads(path.read_text()) == summary


def test_report_png(tmp_path: Path) -> None:
    from PIL import Image

    spans = stage_spans(delivered_trail())
    path = plot(sends()[:1], spans, samples(), tmp_path / "report.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 800


# ---------------------------------------------------------------- sampler and CLI
def test_sampler_keeps_going_when_serve_does_not_answer() -> None:
    def broken() -> dict[str, int]:
        raise RuntimeError("serve controller gone")

    sampler = Sampler(lambda: {"linked": 2, "delivered": 5}, broken, interval_s=0.01)
    sample = sampler.sample()
    assert sample.replicas == {} and sample.queue_depth == 2 and sample.finished == 5
    sampler.start()
    assert len(sampler.stop()) >= 2
    assert sampler.as_rows()[0]["jobs"] == {"linked": 2, "delivered": 5}


def test_cli_arguments_and_example() -> None:
    args = build_parser().parse_args(["bench", "--studies", "6", "--out", "x", "--rate", "2", "--transport", "stowrs"])
    assert (args.studies, args.out, args.rate, args.transport, args.associations) == (6, Path("x"), 2.0, "stowrs", 4)
    assert EXAMPLE.startswith("Example: pacsai bench --studies 200 --out ")
    assert callable(args.func)


def test_process_cpu_s_reads_a_process_cpu_time_and_none_for_one_gone() -> None:
    busy = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ninput()",
        ],
        stdin=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while (spent := process_cpu_s(busy.pid)) is not None and spent < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert spent is not None and spent >= 0.3  # its own loop's CPU, counted in clock ticks
        own = os.times()
        assert abs(process_cpu_s(os.getpid()) - (own.user + own.system)) < 0.1
    finally:
        busy.communicate(b"\n", timeout=30)
    assert process_cpu_s(busy.pid) is None  # reaped: no /proc entry
