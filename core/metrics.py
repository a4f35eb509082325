"""The metric catalogue: every metric the pipeline exports, its kind, labels and meaning.

One table is the contract between the code that records (``actors.adapters.metrics``, the
Serve replicas), the Grafana dashboards built from it and the tests that scrape Prometheus.
Metrics are recorded with Ray's metrics API, so they aggregate across the nodes of a cluster on
each node's Prometheus endpoint; Ray prefixes every name with ``ray_`` and adds the labels
``NodeAddress``, ``WorkerId``, ``SessionName`` and ``Component`` (dashboards sum over them).

No label ever carries patient data: stages, families, priorities, reason codes, ACK codes and
states are closed vocabularies.

>>> METRICS["pacsai_stage_latency_seconds"].kind
<MetricKind.HISTOGRAM: 'histogram'>
>>> prometheus_name("pacsai_jobs")
'ray_pacsai_jobs'
>>> prometheus_name("pacsai_stage_latency_seconds", "bucket")
'ray_pacsai_stage_latency_seconds_bucket'
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "BATCH_BUCKETS",
    "LATENCY_BUCKETS_S",
    "METRICS",
    "MetricKind",
    "MetricSpec",
    "RAY_PREFIX",
    "STAGE_OF_STATE",
    "STUDY_BUCKETS_S",
    "prometheus_name",
]

RAY_PREFIX = "ray_"
"""What Ray's exporter puts before every application metric's name."""

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Histogram boundaries for one stage's work on one job."""

STUDY_BUCKETS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
"""Histogram boundaries for a study's way from archive to inference start or to its SR."""

BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
"""Histogram boundaries for inference batch sizes."""


STAGE_OF_STATE = {
    "receiving": "assembler",
    "complete": "validator",
    "validated": "router",
    "routed": "prior_linker",
    "linked": "inference",
    "inferred": "sr_writer",
    "written": "delivery",
}
"""The stage that takes a job from each working state (the ``state`` of each stage actor): the
``stage`` label of the queue gauges."""


class MetricKind(StrEnum):
    """Prometheus metric kinds as Ray records them."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric.

    Attributes:
        name: The name as recorded (Prometheus sees ``ray_`` + name, and ``_total`` is part of
            counters' names here already).
        kind: Counter, gauge or histogram.
        help: What it measures, for ``# HELP`` and the dashboards.
        labels: Its label keys (closed vocabularies only).
        buckets: Histogram boundaries.
        source: Who records it (for operators reading the catalogue).
    """

    name: str
    kind: MetricKind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    source: str = ""


def _spec(*args: object, **kwargs: object) -> tuple[str, MetricSpec]:
    spec = MetricSpec(*args, **kwargs)  # type: ignore[arg-type]
    return spec.name, spec


C, G, H = MetricKind.COUNTER, MetricKind.GAUGE, MetricKind.HISTOGRAM

METRICS: dict[str, MetricSpec] = dict(
    [
        # The ledger's view, published by the auditor every few seconds (one publisher per site).
        _spec("pacsai_jobs", G, "Jobs per state in the ledger.", ("state",), source="auditor"),
        _spec("pacsai_queue_depth", G, "Jobs due for a stage and not yet taken.", ("stage",), source="auditor"),
        _spec(
            "pacsai_oldest_waiting_seconds",
            G,
            "Age of the oldest job waiting in a stage's state (0 when none).",
            ("stage",),
            source="auditor",
        ),
        _spec("pacsai_outbox_backlog", G, "Result objects not yet delivered to the PACS.", source="auditor"),
        _spec("pacsai_ehr_backlog", G, "FHIR results not yet delivered to the EHR.", source="auditor"),
        _spec("pacsai_quarantine_held", G, "Quarantined instances held, per reason code.", ("code",), source="auditor"),
        _spec("pacsai_model_replicas", G, "Running Serve replicas per model family.", ("family",), source="auditor"),
        _spec(
            "pacsai_model_agreement_rate",
            G,
            "Share of reviewed findings readers agreed with in the latest month with reviews, per model version.",
            ("model_version",),
            source="auditor",
        ),
        # Stages.
        _spec(
            "pacsai_stage_latency_seconds",
            H,
            "Time one stage spent on one job.",
            ("stage",),
            LATENCY_BUCKETS_S,
            source="stages",
        ),
        _spec(
            "pacsai_stage_jobs_total",
            C,
            "Jobs a stage finished, by outcome (ok, retry, unavailable, lease_lost).",
            ("stage", "outcome"),
            source="stages",
        ),
        _spec(
            "pacsai_errors_total",
            C,
            "Errors by kind (the exception's class) and where they happened.",
            ("where", "kind"),
            source="stages, listener, hl7",
        ),
        _spec(
            "pacsai_archive_to_inference_start_seconds",
            H,
            "From the study's last instance archived (received) to its inference starting.",
            ("family", "priority"),
            STUDY_BUCKETS_S,
            source="inference",
        ),
        _spec(
            "pacsai_archive_to_sr_seconds",
            H,
            "From the study's last instance archived (received) to its SR delivered to the PACS.",
            ("family", "priority"),
            STUDY_BUCKETS_S,
            source="delivery",
        ),
        _spec(
            "pacsai_inference_batch_size",
            H,
            "Inputs per batched call of a model replica.",
            ("family",),
            BATCH_BUCKETS,
            source="serve replicas",
        ),
        # Ingest.
        _spec(
            "pacsai_instances_received_total",
            C,
            "Instances made durable, by transport (dimse, stowrs).",
            ("transport",),
            source="listener, api",
        ),
        _spec(
            "pacsai_instances_quarantined_total",
            C,
            "Instances quarantined, by reason code.",
            ("code",),
            source="validator",
        ),
        # HL7.
        _spec(
            "pacsai_hl7_messages_total",
            C,
            "HL7 v2 messages answered, by ACK code (AA, AE, AR) and message type.",
            ("ack_code", "message_type"),
            source="hl7 listener",
        ),
    ]
)
"""Every metric, by recorded name."""

del C, G, H


def prometheus_name(name: str, suffix: str = "") -> str:
    """The series name Prometheus stores for ``name`` (``suffix``: ``bucket``, ``sum``, ``count``)."""
    return RAY_PREFIX + name + (f"_{suffix}" if suffix else "")
