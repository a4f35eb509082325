"""The Grafana dashboards: built from the metric catalogue, five of them, and the committed
provisioning folder is exactly what the generator writes now (so it cannot go stale)."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import ops
import ops.dashboards
from core.metrics import METRICS, MetricKind, prometheus_name
from ops.dashboards import DASHBOARD_TITLES, DASHBOARDS, SERVE_METRICS, dashboard_json, panel_queries
from ops.grafana import export_provisioning

REPO = Path(__file__).resolve().parents[2]
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"

REQUIRED_TITLES = {
    "pacsai-overview": "PACS-AI pipeline overview",
    "pacsai-latency": "PACS-AI latency",
    "pacsai-models": "PACS-AI models",
    "pacsai-ingest": "PACS-AI ingest",
    "pacsai-hl7": "PACS-AI HL7",
}


def _catalogue_series() -> set[str]:
    series = set()
    for name, spec in METRICS.items():
        if spec.kind is MetricKind.HISTOGRAM:
            series |= {prometheus_name(name, suffix) for suffix in ("bucket", "sum", "count")}
        else:
            series.add(prometheus_name(name))
    return series


def test_five_dashboards_with_the_required_titles() -> None:
    assert DASHBOARD_TITLES == REQUIRED_TITLES
    assert [dashboard_json(spec)["title"] for spec in DASHBOARDS] == list(REQUIRED_TITLES.values())


def test_every_panel_query_names_only_catalogue_or_serve_metrics() -> None:
    allowed = _catalogue_series() | set(SERVE_METRICS)
    used = set()
    for q in panel_queries():
        names = set(re.findall(r"\b(ray_[a-zA-Z0-9_]+)", q.expr))
        assert names, f"{q.dashboard_uid} / {q.panel_title}: no metric in {q.expr!r}"
        assert names <= allowed, f"{q.dashboard_uid} / {q.panel_title}: unknown {sorted(names - allowed)}"
        assert "$" not in q.expr, f"{q.panel_title}: Grafana variables make the PromQL unrunnable as it is"
        used |= names
    # Every catalogue metric is on some dashboard (histograms through any of their series).
    shown = {name for name in METRICS if any(s.startswith(prometheus_name(name)) for s in used)}
    assert shown == set(METRICS)


SERVE_LABELS = {"application", "deployment", "replica", "route"}
"""The tags Ray Serve puts on its replica and controller metrics."""


def _labels_of(series: str) -> set[str]:
    if series in SERVE_METRICS:
        return SERVE_LABELS | ({"le"} if series.endswith("_bucket") else set())
    for name, spec in METRICS.items():
        if series == prometheus_name(name):
            return set(spec.labels)
        if series.startswith(prometheus_name(name) + "_"):
            return set(spec.labels) | ({"le"} if series.endswith("_bucket") else set())
    raise AssertionError(f"{series}: not in the catalogue")


def test_every_grouping_and_matcher_uses_labels_the_metrics_have() -> None:
    for q in panel_queries():
        metrics = set(re.findall(r"\b(ray_[a-zA-Z0-9_]+)", q.expr))
        have = set.intersection(*(_labels_of(m) for m in metrics))
        grouped = {label.strip() for group in re.findall(r"by \(([^)]*)\)", q.expr) for label in group.split(",")}
        matched = set(re.findall(r"[{,]\s*([a-zA-Z_]+)\s*[=!]~?", q.expr))
        assert grouped | matched <= have, f"{q.dashboard_uid} / {q.panel_title}: {sorted((grouped | matched) - have)}"


def test_serve_metrics_exist_in_ray_serve_source() -> None:
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations
    source = "".join(
        p.read_text() for p in (Path(spec.submodule_search_locations[0]) / "serve" / "_private").glob("*.py")
    )
    for series in SERVE_METRICS:
        recorded = re.sub(r"_(total|bucket)$", "", series.removeprefix("ray_"))
        assert f'"{recorded}"' in source, f"{series}: Ray Serve records no metric {recorded!r}"


def test_every_panel_reads_the_datasource_variable_and_has_a_unique_title() -> None:
    for spec in DASHBOARDS:
        board = dashboard_json(spec)
        assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
        titles = [p["title"] for p in board["panels"]]
        assert len(titles) == len(set(titles)), spec.uid
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"] and panel["gridPos"]["w"] > 0
            assert [t["refId"] for t in panel["targets"]] == [chr(ord("A") + n) for n in range(len(panel["targets"]))]
        assert [p["id"] for p in board["panels"]] == list(range(1, len(board["panels"]) + 1))


def test_panel_queries_lists_every_target() -> None:
    queries = panel_queries()
    targets = sum(len(p["targets"]) for spec in DASHBOARDS for p in dashboard_json(spec)["panels"])
    assert len(queries) == targets
    assert {q.dashboard_uid for q in queries} == set(REQUIRED_TITLES)


def test_committed_provisioning_folder_is_what_the_generator_writes(tmp_path: Path) -> None:
    written = export_provisioning(tmp_path)
    fresh = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in written}
    committed = {
        p.relative_to(PROVISIONING).as_posix(): p.read_bytes() for p in sorted(PROVISIONING.rglob("*")) if p.is_file()
    }
    assert sorted(committed) == sorted(fresh), "run: .venv/bin/pacsai grafana export --dir deploy/grafana/provisioning"
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert not stale, f"stale: {stale}; run: pacsai grafana export --dir deploy/grafana/provisioning"


def test_export_removes_dashboards_no_longer_generated(tmp_path: Path) -> None:
    (tmp_path / "dashboards").mkdir()
    (tmp_path / "dashboards" / "pacsai-retired.json").write_text("{}")
    export_provisioning(tmp_path)
    assert not (tmp_path / "dashboards" / "pacsai-retired.json").exists()


def test_grafana_command_is_a_pacsai_entry_point() -> None:
    found = {ep.name: ep.value for ep in entry_points(group="pacsai.commands")}
    assert found.get("grafana") == "ops.cli:register"


@pytest.mark.parametrize("name", ["ops", "ops.cli", "ops.dashboards", "ops.grafana"])
def test_public_surface_is_sorted_and_exists(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__all__ == sorted(module.__all__)
    if name == "ops":  # the package names its modules
        assert module.__all__ == sorted(m.name for m in pkgutil.iter_modules(ops.__path__))
    else:
        assert all(hasattr(module, attr) for attr in module.__all__)


def test_docstring_examples_run() -> None:
    failed, attempted = doctest.testmod(ops.dashboards, report=False)
    assert (failed, attempted > 0) == (0, True)
