"""One trace per study: spans of different processes join by a trace id derived from the UID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from actors.adapters import tracing
from actors.adapters.tracing import study_trace_id, tracing_env

ROOT = Path(__file__).resolve().parents[2]

SPAN = """
import sys
from actors.adapters.tracing import study_span
with study_span(sys.argv[1], sys.argv[2], service=sys.argv[1], job_id=7):
    pass
"""


def _spans_from_processes(tmp_path: Path, calls: list[tuple[str, str]]) -> list[dict]:
    spans = tmp_path / "spans.jsonl"
    env = {**os.environ, **tracing_env("file", str(spans), None), "PYTHONPATH": str(ROOT)}
    for name, study in calls:  # each span from its own process, as each stage is its own actor
        subprocess.run([sys.executable, "-c", SPAN, name, study], env=env, check=True, cwd=ROOT)
    return [json.loads(line) for line in spans.read_text().splitlines()]


def test_spans_of_one_study_share_a_trace_across_processes(tmp_path: Path) -> None:
    spans = _spans_from_processes(
        tmp_path, [("stage:router", "1.2.3"), ("stage:inference", "1.2.3"), ("stage:router", "1.2.4")]
    )
    assert [s["name"] for s in spans] == ["stage:router", "stage:inference", "stage:router"]
    traces = [s["context"]["trace_id"] for s in spans]
    assert traces[0] == traces[1] == f"0x{study_trace_id('1.2.3'):032x}" != traces[2]
    assert spans[0]["attributes"] == {"pacsai.study_uid": "1.2.3", "pacsai.job_id": 7}
    assert {s["resource"]["attributes"]["pacsai.process"] for s in spans} == {"stage:router", "stage:inference"}
    assert oct(os.stat(tmp_path / "spans.jsonl").st_mode & 0o777) == "0o600"


def test_tracing_off_costs_nothing_and_yields_no_span(monkeypatch) -> None:
    monkeypatch.delenv(tracing.ENV, raising=False)
    monkeypatch.setattr(tracing, "_configured", False)
    monkeypatch.setattr(tracing, "_tracer", None)
    with tracing.study_span("stage:router", "1.2.3") as span:
        assert span is None


def test_a_bad_exporter_config_drops_spans_and_never_raises(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(tracing.ENV, "{not json")
    monkeypatch.setattr(tracing, "_configured", False)
    monkeypatch.setattr(tracing, "_tracer", None)
    with tracing.study_span("stage:router", "1.2.3") as span:
        assert span is None
