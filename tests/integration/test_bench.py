"""``pacsai bench`` end to end, small: Orthanc, the pipeline on its own Ray, six studies, baselines.

The benchmark runs in a subprocess through ``actors.cli.main`` (its ``pacsai.commands`` entry
point): it starts and stops its own local Ray, which must not be the session's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks.harness.load import parse_mix, plan
from tests.integration.conftest import needs_peers

pytestmark = [pytest.mark.integration, needs_peers]

ROOT = Path(__file__).resolve().parents[2]
MIX = "cxr=2,ct:6=1"
"""One-image chest radiographs (delivered SRs) and six-slice CTs no rule routes (skipped jobs)."""
SEED = 20_000
DELIVERED_STAGES = {
    "send",
    "receive",
    "assemble",
    "validate",
    "route",
    "link",
    "infer",
    "write",
    "deliver",
    "archive_to_sr",
}
SKIPPED_STAGES = {"send", "receive", "assemble", "validate", "route"}


def test_bench_writes_spans_report_and_summary(tmp_path: Path, demo_weights: dict[str, Path]) -> None:
    out = tmp_path / "bench"
    args = ["bench", "--studies", "6", "--associations", "2", "--mix", MIX, "--seed", str(SEED), "--out", str(out)]
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from actors.cli import main; sys.exit(main(sys.argv[1:]))", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "summary.json" in run.stdout

    kinds = [e.kind for e in plan(parse_mix(MIX), 6, SEED)]
    table = pq.read_table(out / "spans.parquet").to_pylist()
    by_study: dict[str, set[str]] = {}
    for row in table:
        assert row["duration_s"] >= 0 and row["end_ts"] >= row["start_ts"]
        assert row["stage"] not in by_study.setdefault(row["study_uid"], set()), row  # one row per (study, stage)
        by_study[row["study_uid"]].add(row["stage"])
    assert len(by_study) == 6
    assert sorted(len(stages) for stages in by_study.values()) == sorted(
        len(DELIVERED_STAGES if k == "cxr" else SKIPPED_STAGES) for k in kinds
    )
    assert {r["family"] for r in table if r["outcome"] == "delivered"} == {"chest_xray"}

    with Image.open(out / "report.png") as image:
        assert image.format == "PNG"
    assert (out / "report.png").stat().st_size > 20_000

    summary = json.loads((out / "summary.json").read_text())
    assert summary["studies"] == summary["studies_finished"] == summary["studies_sent_ok"] == 6
    assert summary["send_errors"] == []
    assert summary["final_states"] == {"delivered": kinds.count("cxr"), "skipped": kinds.count("ct")}
    assert summary["throughput_studies_per_s"] > 0
    assert summary["models"] == ["chest_xray"]
    for field in ("duration_s", "stages", "archive_to_sr_s", "baselines", "device", "commit", "queue_depth_max"):
        assert field in summary
    assert set(summary["archive_to_sr_s"]) == {"p50", "p95", "p99"}
    assert summary["stages"]["infer"]["n"] == kinds.count("cxr")
    assert summary["baselines"]["bare_scp_inst_per_s"] > 0 and summary["baselines"]["listener_inst_per_s"] > 0


def test_bench_review_quick_measures_worklists_and_pushes() -> None:
    """``benchmarks/bench_review.py --quick``: both lines, every request answered, every push received."""
    run = subprocess.run(
        [sys.executable, "benchmarks/bench_review.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    lines = {r["what"]: r for r in (json.loads(x) for x in run.stdout.splitlines() if x.startswith("{"))}
    worklist, push = lines["worklist"], lines["push"]
    assert "error" not in worklist and "error" not in push, (worklist, push)
    assert worklist["errors"] == 0 and worklist["requests"] > 0
    assert 0 < worklist["p99_ms"] and 0 < worklist["unfiltered_p99_ms"] and worklist["ratio"] > 0
    assert 0 < worklist["junior_total"] < worklist["unfiltered_total"] <= worklist["studies"]
    assert push["received"] == push["pushes"] and 0 < push["p95_ms"] < 5000
