"""The Grafana dashboards, as code: built with Grafana's builder library from the metric catalogue.

Five dashboards (``DASHBOARD_TITLES``): the pipeline overview, latency, models, ingest and HL7.
Each is a ``DashboardSpec`` of ``PanelSpec`` s whose PromQL names metrics through
``core.metrics.prometheus_name`` (a catalogue rename breaks this module at import, not a panel at
3 a.m.) or through ``SERVE_METRICS`` (Ray Serve's own, as Ray 2.60 names them).

Every query aggregates over the labels Ray adds (``NodeAddress``, ``WorkerId``, ``SessionName``,
``Component``): counters and histograms with ``sum by (...)``, the auditor's ledger gauges with
``max by (...)`` (one publisher per site; ``max`` ignores a restarted auditor's stale twin).
Windows are fixed (``[5m]``), not Grafana's ``$__rate_interval``, so each expression is plain
PromQL that ``panel_queries`` hands to Prometheus as it is.

Panels read the ``datasource`` template variable (type ``prometheus``), so the same JSON works
with a provisioned data source and with one an operator made by hand.

>>> [d.uid for d in DASHBOARDS]
['pacsai-overview', 'pacsai-latency', 'pacsai-models', 'pacsai-ingest', 'pacsai-hl7']
>>> dashboard_json(DASHBOARDS[0])["title"]
'PACS-AI pipeline overview'
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import dashboard as gdb
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from core.metrics import METRICS, prometheus_name

__all__ = [
    "DASHBOARDS",
    "DASHBOARD_TITLES",
    "DashboardSpec",
    "PanelKind",
    "PanelQuery",
    "PanelSpec",
    "Query",
    "SERVE_METRICS",
    "build_dashboard",
    "dashboard_json",
    "panel_queries",
]

SERVE_METRICS = (
    "ray_serve_deployment_request_counter_total",
    "ray_serve_deployment_processing_latency_ms_bucket",
    "ray_serve_deployment_replica_healthy",
    "ray_serve_replica_processing_queries",
)
"""Ray Serve's own series the models dashboard reads (``ray/serve/_private/replica.py`` and
``deployment_state.py`` in Ray 2.60). Each exists once a deployment runs and serves handle calls;
the HTTP-proxy ones (``ray_serve_num_http_requests_total``) would not for handle-only traffic."""

MODEL_APPS = 'application=~"model-.*"'
"""The model families' Serve applications (``core.config``: ``model-<family>``), not the API."""

WINDOW = "5m"
"""The rate window: at least four scrapes at any sane scrape interval."""


class PanelKind(enum.StrEnum):
    """How a panel draws its queries."""

    TIMESERIES = "timeseries"
    """A graph over the dashboard's time range."""
    STAT = "stat"
    """One big number per series (the last value)."""


@dataclass(frozen=True, slots=True)
class Query:
    """One PromQL expression and its legend (Grafana's ``{{label}}`` template)."""

    expr: str
    legend: str = ""


@dataclass(frozen=True, slots=True)
class PanelSpec:
    """One panel: its title, what it shows, its queries and how to draw them."""

    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: PanelKind = PanelKind.TIMESERIES
    width: int = 12


@dataclass(frozen=True, slots=True)
class DashboardSpec:
    """One dashboard: a stable uid (its URL and the overwrite key), title, summary and panels."""

    uid: str
    title: str
    description: str
    panels: tuple[PanelSpec, ...]


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """One panel's query as the dashboard JSON carries it (what ``panel_queries`` lists)."""

    dashboard_uid: str
    panel_title: str
    expr: str


# ---------------------------------------------------------------- PromQL from the catalogue
def _m(name: str, suffix: str = "") -> str:
    """The Prometheus series of catalogue metric ``name`` (KeyError if it is not catalogued)."""
    return prometheus_name(METRICS[name].name, suffix)


def _rate(series: str, by: str, selector: str = "") -> str:
    sel = f"{{{selector}}}" if selector else ""
    return f"sum by ({by}) (rate({series}{sel}[{WINDOW}]))"


def _quantile(q: float, bucket_series: str, by: str, selector: str = "") -> str:
    sel = f"{{{selector}}}" if selector else ""
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({bucket_series}{sel}[{WINDOW}])))"


def _mean(histogram: str, by: str) -> str:
    return f"{_rate(_m(histogram, 'sum'), by)} / {_rate(_m(histogram, 'count'), by)}"


def _gauge(name: str, by: str = "") -> str:
    return f"max by ({by}) ({_m(name)})" if by else f"max({_m(name)})"


def _legend(by: str) -> str:
    return " ".join("{{" + label.strip() + "}}" for label in by.split(","))


def _p(q: float, histogram: str, by: str) -> Query:
    return Query(_quantile(q, _m(histogram, "bucket"), by), f"p{round(q * 100)} {_legend(by)}")


# ---------------------------------------------------------------- the five dashboards
def _stat(title: str, description: str, expr: str, legend: str = "", unit: str = "short") -> PanelSpec:
    return PanelSpec(title, description, (Query(expr, legend),), unit, PanelKind.STAT, width=6)


OVERVIEW = DashboardSpec(
    "pacsai-overview",
    "PACS-AI pipeline overview",
    "Where the jobs are, how fast the stages finish them, what is waiting and what failed.",
    (
        _stat("PACS outbox backlog", METRICS["pacsai_outbox_backlog"].help, _gauge("pacsai_outbox_backlog")),
        _stat("EHR outbox backlog", METRICS["pacsai_ehr_backlog"].help, _gauge("pacsai_ehr_backlog")),
        _stat(
            "Quarantined instances held",
            METRICS["pacsai_quarantine_held"].help,
            f"sum({_gauge('pacsai_quarantine_held', 'code')})",
        ),
        _stat(
            "Model replicas running",
            METRICS["pacsai_model_replicas"].help,
            f"sum({_gauge('pacsai_model_replicas', 'family')})",
        ),
        PanelSpec("Jobs per state", METRICS["pacsai_jobs"].help, (Query(_gauge("pacsai_jobs", "state"), "{{state}}"),)),
        PanelSpec(
            "Queue depth per stage",
            METRICS["pacsai_queue_depth"].help,
            (Query(_gauge("pacsai_queue_depth", "stage"), "{{stage}}"),),
        ),
        PanelSpec(
            "Oldest waiting job per stage",
            METRICS["pacsai_oldest_waiting_seconds"].help,
            (Query(_gauge("pacsai_oldest_waiting_seconds", "stage"), "{{stage}}"),),
            unit="s",
        ),
        PanelSpec(
            "Stage throughput by outcome",
            METRICS["pacsai_stage_jobs_total"].help,
            (Query(_rate(_m("pacsai_stage_jobs_total"), "stage, outcome"), "{{stage}} {{outcome}}"),),
            unit="ops",
        ),
        PanelSpec(
            "Errors per second",
            METRICS["pacsai_errors_total"].help,
            (Query(_rate(_m("pacsai_errors_total"), "where, kind"), "{{where}} {{kind}}"),),
            unit="ops",
            width=24,
        ),
    ),
)

LATENCY = DashboardSpec(
    "pacsai-latency",
    "PACS-AI latency",
    "Time per stage and per study: from the archive to inference and to the SR in the PACS.",
    (
        PanelSpec(
            "Stage latency p50 and p95",
            METRICS["pacsai_stage_latency_seconds"].help,
            (_p(0.5, "pacsai_stage_latency_seconds", "stage"), _p(0.95, "pacsai_stage_latency_seconds", "stage")),
            unit="s",
        ),
        PanelSpec(
            "Mean stage latency",
            METRICS["pacsai_stage_latency_seconds"].help,
            (Query(_mean("pacsai_stage_latency_seconds", "stage"), "{{stage}}"),),
            unit="s",
        ),
        PanelSpec(
            "Archive to inference start p95",
            METRICS["pacsai_archive_to_inference_start_seconds"].help,
            (_p(0.95, "pacsai_archive_to_inference_start_seconds", "family, priority"),),
            unit="s",
        ),
        PanelSpec(
            "Archive to SR p50 and p95",
            METRICS["pacsai_archive_to_sr_seconds"].help,
            (
                _p(0.5, "pacsai_archive_to_sr_seconds", "family, priority"),
                _p(0.95, "pacsai_archive_to_sr_seconds", "family, priority"),
            ),
            unit="s",
        ),
        PanelSpec(
            "Studies delivered per second",
            "SRs delivered to the PACS (the archive-to-SR histogram's count).",
            (Query(_rate(_m("pacsai_archive_to_sr_seconds", "count"), "family, priority"), "{{family}} {{priority}}"),),
            unit="ops",
            width=24,
        ),
    ),
)

MODELS = DashboardSpec(
    "pacsai-models",
    "PACS-AI models",
    "The model families' Serve applications: replicas, batching, request rate and latency.",
    (
        PanelSpec(
            "Model replicas per family",
            METRICS["pacsai_model_replicas"].help,
            (Query(_gauge("pacsai_model_replicas", "family"), "{{family}}"),),
        ),
        PanelSpec(
            "Reader agreement rate per model version (this month)",
            METRICS["pacsai_model_agreement_rate"].help,
            (Query(_gauge("pacsai_model_agreement_rate", "model_version"), "{{model_version}}"),),
            unit="percentunit",
        ),
        PanelSpec(
            "Inference batch size p50 and p95",
            METRICS["pacsai_inference_batch_size"].help,
            (_p(0.5, "pacsai_inference_batch_size", "family"), _p(0.95, "pacsai_inference_batch_size", "family")),
        ),
        PanelSpec(
            "Serve requests per second",
            "Calls each model deployment's replicas finished (Ray Serve's request counter).",
            (Query(_rate(SERVE_METRICS[0], "application, deployment", MODEL_APPS), "{{application}}"),),
            unit="reqps",
        ),
        PanelSpec(
            "Serve processing latency p95",
            "Time a replica spent on one call, batching wait included (Ray Serve's histogram).",
            (Query(_quantile(0.95, SERVE_METRICS[1], "application, deployment", MODEL_APPS), "{{application}}"),),
            unit="ms",
        ),
        PanelSpec(
            "Healthy Serve replicas",
            "Replicas whose health check passes, per model application (Ray Serve's controller).",
            (Query(f"sum by (application) ({SERVE_METRICS[2]}{{{MODEL_APPS}}})", "{{application}}"),),
        ),
        PanelSpec(
            "Calls in progress per application",
            "Calls the replicas are working on now (Ray Serve's gauge, summed over replicas).",
            (Query(f"sum by (application) ({SERVE_METRICS[3]}{{{MODEL_APPS}}})", "{{application}}"),),
        ),
    ),
)

INGEST = DashboardSpec(
    "pacsai-ingest",
    "PACS-AI ingest",
    "Instances coming in by C-STORE and STOW-RS, and what the validator quarantined.",
    (
        PanelSpec(
            "Instances received per second",
            METRICS["pacsai_instances_received_total"].help,
            (Query(_rate(_m("pacsai_instances_received_total"), "transport"), "{{transport}}"),),
            unit="ops",
        ),
        PanelSpec(
            "Instances received in the last hour",
            METRICS["pacsai_instances_received_total"].help,
            (Query(f"sum by (transport) (increase({_m('pacsai_instances_received_total')}[1h]))", "{{transport}}"),),
            kind=PanelKind.STAT,
        ),
        PanelSpec(
            "Instances quarantined per second",
            METRICS["pacsai_instances_quarantined_total"].help,
            (Query(_rate(_m("pacsai_instances_quarantined_total"), "code"), "{{code}}"),),
            unit="ops",
        ),
        PanelSpec(
            "Quarantined instances held per reason",
            METRICS["pacsai_quarantine_held"].help,
            (Query(_gauge("pacsai_quarantine_held", "code"), "{{code}}"),),
        ),
    ),
)

_HL7 = _m("pacsai_hl7_messages_total")

HL7 = DashboardSpec(
    "pacsai-hl7",
    "PACS-AI HL7",
    "HL7 v2 messages from the RIS / EHR, by type and by the ACK we answered.",
    (
        PanelSpec(
            "HL7 messages per second by ACK code",
            METRICS["pacsai_hl7_messages_total"].help,
            (Query(_rate(_HL7, "ack_code"), "{{ack_code}}"),),
            unit="ops",
        ),
        PanelSpec(
            "HL7 messages per second by type",
            METRICS["pacsai_hl7_messages_total"].help,
            (Query(_rate(_HL7, "message_type"), "{{message_type}}"),),
            unit="ops",
        ),
        PanelSpec(
            "Share of HL7 messages not accepted",
            "AE and AR answers over all answers (0 while every message gets AA).",
            (Query(f'(sum(rate({_HL7}{{ack_code!="AA"}}[{WINDOW}])) or vector(0)) / sum(rate({_HL7}[{WINDOW}]))'),),
            unit="percentunit",
        ),
        PanelSpec(
            "HL7 messages in the last hour",
            METRICS["pacsai_hl7_messages_total"].help,
            (Query(f"sum by (message_type, ack_code) (increase({_HL7}[1h]))", "{{message_type}} {{ack_code}}"),),
            kind=PanelKind.STAT,
        ),
    ),
)

DASHBOARDS: tuple[DashboardSpec, ...] = (OVERVIEW, LATENCY, MODELS, INGEST, HL7)
"""The dashboards, in the order the provisioning folder lists them."""

DASHBOARD_TITLES: dict[str, str] = {d.uid: d.title for d in DASHBOARDS}
"""Title by uid."""


# ---------------------------------------------------------------- building with the SDK
_DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


def _target(query: Query, ref_id: str, kind: PanelKind) -> prometheus.Dataquery:
    target = prometheus.Dataquery().expr(query.expr).ref_id(ref_id).legend_format(query.legend or "__auto")
    return target.instant() if kind is PanelKind.STAT else target.range()


def _panel(spec: PanelSpec) -> timeseries.Panel | stat.Panel:
    panel = timeseries.Panel() if spec.kind is PanelKind.TIMESERIES else stat.Panel()
    panel = panel.title(spec.title).description(spec.description).datasource(_DATASOURCE)
    panel = panel.unit(spec.unit).span(spec.width).height(4 if spec.kind is PanelKind.STAT else 8)
    for n, query in enumerate(spec.queries):
        panel = panel.with_target(_target(query, chr(ord("A") + n), spec.kind))
    return panel


def build_dashboard(spec: DashboardSpec) -> gdb.Dashboard:
    """Build one dashboard with Grafana's builder library.

    Args:
        spec: The dashboard to build.

    Returns:
        The builder; ``dashboard_json`` renders it.
    """
    board = (
        gdb.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(["pacsai"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .readonly()
        .with_variable(gdb.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    for panel in spec.panels:
        board = board.with_panel(_panel(panel))
    return board


def dashboard_json(spec: DashboardSpec) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (what the API and the file provider take)."""
    data: dict[str, Any] = json.loads(json.dumps(build_dashboard(spec).build(), cls=JSONEncoder))
    for n, panel in enumerate(data.get("panels", []), start=1):
        panel["id"] = n  # Grafana keys panel links and state by id; stable ids keep the files stable
        if panel.get("options") is None:
            panel.pop("options", None)  # the builder writes null; Grafana's panels expect an object or none
    return data


def panel_queries() -> list[PanelQuery]:
    """Every panel's PromQL, read back from the dashboards' JSON, for tests to run.

    Returns:
        One ``PanelQuery(dashboard_uid, panel_title, expr)`` per query target, in dashboard and
        panel order. Each ``expr`` is plain PromQL (no Grafana variables).

    >>> q = panel_queries()[0]
    >>> (q.dashboard_uid, q.panel_title, q.expr)
    ('pacsai-overview', 'PACS outbox backlog', 'max(ray_pacsai_outbox_backlog)')
    """
    return [
        PanelQuery(board["uid"], panel["title"], target["expr"])
        for board in (dashboard_json(spec) for spec in DASHBOARDS)
        for panel in board.get("panels", [])
        for target in panel.get("targets", [])
    ]
