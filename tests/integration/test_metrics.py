"""Issue 15: the pipeline's metrics, scraped by a real Prometheus while studies and HL7 flow,
every Grafana panel's query answered with data, and one trace per study across the actors.

One pipeline (one machine, SQLite) with the HL7 bridge and an EHR that cannot be reached (so
its backlog grows), Ray's metrics endpoint scraped every second by the Debian ``prometheus``.
Then: two studies to the SR, one instance quarantined, one C-STORE refused, HL7 messages
answered AA and AR. Each catalogue metric is checked to have moved as that traffic implies.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.adapters.mllp import MllpClient
from actors.adapters.tracing import study_trace_id
from actors.pipeline import wait_until
from core.clinical import FindingDecision, ReviewRequest
from core.metrics import METRICS, STAGE_OF_STATE, MetricKind, prometheus_name
from demo.dcmtk import storescu
from demo.orthanc import free_port
from demo.prometheus import PrometheusProcess
from ops.dashboards import panel_queries
from state.ledger import Ledger
from tests.corruptions import unparseable_part10
from tests.hl7_messages import orm
from tests.integration.conftest import ledger_of, needs_peers, wait_for_states
from tests.integration.test_quarantine import study_files

pytestmark = [
    pytest.mark.integration,
    needs_peers,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian prometheus is not installed"),
]

HL7 = {"listener": {"port": 0}, "identifier_systems": {"HOSP": "http://hosp.example/mrn"}}


def _metrics_port() -> int:
    """Ray's Prometheus endpoint on this (the only) node."""
    [node] = [n for n in ray.nodes() if n.get("Alive")]
    return int(node["MetricsExportPort"])


def _value(prom: PrometheusProcess, expr: str) -> float:
    """The instant value of a scalar-valued ``expr`` (``sum(...)``); 0 when there is no series."""
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else 0.0


def _labels(prom: PrometheusProcess, expr: str, label: str) -> set[str]:
    return {r["metric"].get(label, "") for r in prom.query(expr)}


def _send_unparseable(port: int, ae_title: str, tmp_path: Path) -> int:
    """A C-STORE whose data set pydicom cannot parse: the listener answers 0xC000."""
    from pynetdicom import AE, _config

    bad = unparseable_part10(tmp_path / "bad.dcm", "1.2.3.4.5.6.7.15")
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title="FUZZ")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
        assert assoc.is_established
        status = assoc.send_c_store(bad)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
    return int(status.Status)


@pytest.fixture
def flowing(tmp_path: Path, orthanc: Any, make_pipeline: Any) -> Iterator[dict[str, Any]]:
    """The pipeline, Prometheus scraping it, and the traffic of the module docstring."""
    unreachable_ehr = {
        "fhir": {"base_url": f"http://127.0.0.1:{free_port()}/fhir", "timeout_s": 1, "allow_plaintext": True}
    }
    spans = tmp_path / "spans.jsonl"
    pipeline, cfg = make_pipeline(
        orthanc,
        hl7=HL7,
        ehr={**unreachable_ehr, "poll_interval_s": 0.2},
        tracing={"exporter": "file", "file": str(spans)},
        clinical={"agreement_period_s": 1.0},  # the auditor's agreement watch publishes its gauge
    )
    prom = PrometheusProcess(tmp_path / "prometheus", targets=[f"127.0.0.1:{_metrics_port()}"]).start()
    try:
        prom.wait_for_targets_up()
        ledger = ledger_of(pipeline)
        # Two good studies (one with a quarantined second instance), one refused C-STORE.
        good, good_files = study_files(tmp_path, 151, 1, {})
        mixed, mixed_files = study_files(tmp_path, 152, 2, {1: ("HighBit", 15)})
        for files in (good_files, mixed_files):
            res = storescu(files, "127.0.0.1", pipeline.listener_port(), cfg.listener.ae_title)
            assert res.returncode == 0, res.stderr[-500:]
        assert _send_unparseable(pipeline.listener_port(), cfg.listener.ae_title, tmp_path) == 0xC000
        client = MllpClient("127.0.0.1", pipeline.hl7_port())
        try:
            [ok] = client.send(orm("MET151", mrn="P151", accession="ACC151").encode())
            [bad] = client.send(b"MSH|^~\\&|RIS|HOSP|PACSAI|HOSP|20260101||ORM^O01|MET152|P|2.5\rPID|garbage")
        finally:
            client.close()
        assert b"MSA|AA" in ok and b"MSA|AA" not in bad
        assert wait_for_states(ledger, [good, mixed], {"delivered"}), ledger.status.report(time.time())
        _review(ledger, good)  # a reader agrees with the AI: pacsai_model_agreement_rate has a value
        yield {"prom": prom, "pipeline": pipeline, "cfg": cfg, "studies": [good, mixed], "spans": spans}
    finally:
        prom.stop()


def _review(ledger: Ledger, study_uid: str) -> None:
    """A reader's review of the study's first finding, as the review route records it."""
    [version] = ledger.results.versions(study_uid)
    items = {i.key: i for i in ledger.clinical.items_of(version.sop_instance_uid) if not i.quality_flag}
    first = next(iter(items.values()))
    decision = FindingDecision(first.key, "agree", first.present)
    request = ReviewRequest("Reader^Rita", (decision,))
    ledger.clinical.record_review(version, "rita", request, items, "token:rita", time.time())


def test_each_metric_moves_as_studies_and_messages_flow_and_every_panel_has_data(flowing: dict[str, Any]) -> None:
    prom: PrometheusProcess = flowing["prom"]
    n = prometheus_name
    # The assembler completes a study in its runner or in its evidence watcher (whichever sees
    # the evidence first), so only its queue gauges are certain to move here.
    stages = sorted(set(STAGE_OF_STATE.values()) - {"assembler"})
    queued = sorted(set(STAGE_OF_STATE.values()))
    families = sorted(flowing["cfg"].models)

    def moved() -> list[str]:
        """The checks that do not hold yet (Ray reports every second, Prometheus scrapes every second)."""
        checks = {
            "received": _value(prom, f'sum({n("pacsai_instances_received_total")}{{transport="dimse"}})') >= 3,
            "quarantined": _value(
                prom, f'sum({n("pacsai_instances_quarantined_total")}{{code="pixel_attributes_inconsistent"}})'
            )
            >= 1,
            "quarantine held": _value(prom, f"max({n('pacsai_quarantine_held')})") >= 1,
            "refused c-store": _value(prom, f'sum({n("pacsai_errors_total")}{{where="listener"}})') >= 1,
            "stage latency": _labels(
                prom, f"sum by (stage) ({n('pacsai_stage_latency_seconds', 'count')}) > 0", "stage"
            )
            >= set(stages),
            "stage outcomes": _labels(prom, f'{n("pacsai_stage_jobs_total")}{{outcome="ok"}} > 0', "stage")
            >= set(stages),
            "archive to inference": _value(prom, f"sum({n('pacsai_archive_to_inference_start_seconds', 'count')})")
            >= 2,
            "archive to sr": _value(prom, f"sum({n('pacsai_archive_to_sr_seconds', 'count')})") >= 2,
            # Two studies' inputs, in one batch or two (Ray exports a histogram's sum from its
            # bucket midpoints, so the sum is not the count of inputs).
            "batch sizes": _value(prom, f"sum({n('pacsai_inference_batch_size', 'count')})") >= 1,
            "hl7 AA": _value(prom, f'sum({n("pacsai_hl7_messages_total")}{{ack_code="AA"}})') >= 1,
            "hl7 refused": _value(prom, f'sum({n("pacsai_hl7_messages_total")}{{ack_code=~"AE|AR"}})') >= 1,
            "jobs delivered": _value(prom, f'max({n("pacsai_jobs")}{{state="delivered"}})') >= 2,
            "queues": _labels(prom, n("pacsai_queue_depth"), "stage") >= set(queued),
            "oldest waiting": _labels(prom, n("pacsai_oldest_waiting_seconds"), "stage") >= set(queued),
            "outbox backlog": bool(prom.query(n("pacsai_outbox_backlog"))),
            "ehr backlog": _value(prom, f"max({n('pacsai_ehr_backlog')})") >= 1,
            "replicas": _labels(prom, f"{n('pacsai_model_replicas')} >= 1", "family") >= set(families),
        }
        return [name for name, ok in checks.items() if not ok]

    assert wait_until(lambda: not moved(), 60.0, 1.0), moved()
    # Every catalogue metric was exported (a name the catalogue lists but nobody records fails).
    for spec in METRICS.values():
        series = n(spec.name, "count") if spec.kind is MetricKind.HISTOGRAM else n(spec.name)
        assert prom.query(series), f"{spec.name}: no series"
    # No label carries anything but the closed vocabularies (no UIDs, names or free text).
    for spec in METRICS.values():
        for r in prom.query(n(spec.name, "count") if spec.kind is MetricKind.HISTOGRAM else n(spec.name)):
            for key in spec.labels:
                value = r["metric"].get(key, "")
                assert len(value) <= 40 and "^" not in value.replace("^", "", 1), (spec.name, key, value)
    # Ray Serve's own metrics are kept beside ours.
    assert prom.query("ray_serve_deployment_request_counter_total")

    # Every Grafana panel's query (ops.dashboards) answers with data from this traffic.
    queries = panel_queries()
    assert len({q.dashboard_uid for q in queries}) >= 5

    def empty() -> list[str]:
        return [f"{q.dashboard_uid} / {q.panel_title}: {q.expr}" for q in queries if not prom.query(q.expr)]

    # rate() over a window needs two scrapes with the change between them: give it a few.
    assert wait_until(lambda: not empty(), 60.0, 2.0), json.dumps(empty(), indent=1)

    # The same run had tracing on: one trace per study across the stage actors.
    _check_one_trace_per_study(flowing)


def _check_one_trace_per_study(flowing: dict[str, Any]) -> None:
    """Tracing on (file exporter): each study's stage spans, written by different actor
    processes, share the trace id derived from its UID."""
    spans_file: Path = flowing["spans"]
    wanted = set(STAGE_OF_STATE.values()) - {"assembler"}  # see above

    def by_study() -> dict[str, dict[str, set[str]]]:
        found: dict[str, dict[str, set[str]]] = {}
        lines = spans_file.read_text().splitlines() if spans_file.exists() else []
        for line in lines:
            span = json.loads(line)
            study = span["attributes"].get("pacsai.study_uid")
            entry = found.setdefault(study, {"stages": set(), "traces": set(), "processes": set()})
            entry["stages"].add(span["name"].removeprefix("stage:"))
            entry["traces"].add(span["context"]["trace_id"])
            entry["processes"].add(span["resource"]["attributes"]["pacsai.process"])
        return found

    assert wait_until(
        lambda: all(wanted <= by_study().get(s, {}).get("stages", set()) for s in flowing["studies"]), 30.0
    )
    found = by_study()
    for study in flowing["studies"]:
        assert found[study]["traces"] == {f"0x{study_trace_id(study):032x}"}, found[study]
        assert len(found[study]["processes"]) >= len(wanted)  # one actor process per stage
