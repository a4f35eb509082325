"""Issue #6: the FHIR client and the EHR outbox against a real HTTP FHIR server."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from actors.adapters.fhir_http import FhirClient
from actors.ehr_delivery import EhrDeliveryWork
from core.config import EhrConfig, FhirEndpointConfig, RetryConfig
from core.errors import DependencyUnavailable, RejectedInput
from core.fhir import ResultSubject, build_result_bundle
from core.findings import term_for
from core.ledger import RetryPolicy
from core.records import Finding, Prediction
from demo.orthanc import free_port
from state.ehr_outbox import EhrOutbox
from state.layout import VarLayout
from state.ledger import open_database, open_ledger
from tests.integration.fhir_server import FhirTestServer
from tests.integration.test_cli import pacsai

pytestmark = pytest.mark.integration

PREDICTION = Prediction(
    "chest_xray", "cxr", "1.0", (Finding("effusion", term_for("effusion"), 0.7, 0.5),), ("1.2.3.1",)
)


def bundle(base_url: str, sr_uid: str = "1.2.3.9") -> dict:
    subject = ResultSubject("1.2.3", sr_uid, {"value": "P1"}, "ACC1", None, "2025-03-01T10:00:00+00:00")
    return build_result_bundle(PREDICTION, subject, base_url, "PACS-AI Bridge")


@pytest.fixture
def server():
    srv = FhirTestServer(free_port()).start()
    yield srv
    srv.stop()


def test_answers_map_to_delivered_unavailable_or_refused(server):
    client = FhirClient(FhirEndpointConfig(base_url=server.base_url, timeout_s=2))
    try:
        assert client.transaction(bundle(server.base_url))["type"] == "transaction-response"
        assert len(server.of_type("Observation")) == 1
        for status, error in (
            (503, DependencyUnavailable),
            (429, DependencyUnavailable),
            (400, RejectedInput),
            (403, RejectedInput),
        ):
            server.force_status = status
            with pytest.raises(error) as info:
                client.transaction(bundle(server.base_url))
            assert str(status) in str(info.value)
        server.force_status = None
        broken = bundle(server.base_url)
        del broken["entry"][-1]["resource"]["status"]  # the server's validation refuses it
        with pytest.raises(RejectedInput, match=r"(?s)HTTP 400: .*status"):
            client.transaction(broken)
    finally:
        client.close()
    # A 2xx is delivered whatever its body (``null``, a list, nesting json cannot read): the
    # body was read with dict(), and TypeError / RecursionError made the delivery loop send
    # the same report again at every round. A refusal's odd body is quoted, not raised.
    client = FhirClient(FhirEndpointConfig(base_url=server.base_url, timeout_s=2))
    try:
        for body in (b"null", b"[1]", b'"ok"', b"[" * 100_000, b"not json"):
            server.force_body = body
            assert client.transaction(bundle(server.base_url)) == {}, body[:10]
        server.force_status = 400
        for body, quoted in ((b'{"issue": 5}', '{"issue": 5}'), (b"[" * 100_000, "[[[[")):
            server.force_body = body
            with pytest.raises(RejectedInput, match=r"HTTP 400: ") as info:
                client.transaction(bundle(server.base_url))
            assert quoted in str(info.value)
    finally:
        server.force_status = server.force_body = None
        client.close()
    nobody = f"http://127.0.0.1:{free_port()}/fhir"
    down = FhirClient(FhirEndpointConfig(base_url=nobody, timeout_s=2))
    with pytest.raises(DependencyUnavailable):
        down.transaction(bundle("http://x"))
    down.close()


def test_a_refused_report_is_retried_then_dead_audited_and_replayed(server, backend, storage_for, tmp_path):
    storage = storage_for(backend)  # the EHR outbox follows the ledger's backend
    ledger = open_ledger(storage)
    outbox = EhrOutbox(open_database(storage.ledger, VarLayout.at(storage.var_dir), "ehr"))
    cfg = EhrConfig(fhir=FhirEndpointConfig(base_url=server.base_url, timeout_s=2))
    retry = RetryConfig(max_attempts=2, base_delay_s=0.05, max_delay_s=0.1)
    policy = RetryPolicy.from_config(retry)
    client = FhirClient(cfg.fhir)
    work = EhrDeliveryWork(ledger, outbox, None, client, cfg, policy, "PACS-AI Bridge")
    try:
        assert outbox.enqueue("1.2.3.9", 7, "1.2.3", 10, bundle(server.base_url), time.time())
        assert not outbox.enqueue("1.2.3.9", 7, "1.2.3", 10, bundle(server.base_url), time.time())
        server.force_status = 422
        for _ in range(20):
            work.send_round()
            if outbox.counts()["dead"]:
                break
            time.sleep(0.06)
        [row] = outbox.reports()
        assert (row.state, row.attempts) == ("dead", 2)
        failed = [e for e in ledger.audit.events() if e.type == "ehr_report_failed"]
        assert [e.detail["dead"] for e in failed] == [False, True]
        assert failed[0].detail["error"] == "HTTP 422"  # no server text (may quote PHI)

        # The cause is mended at the EHR: the operator finds the dead report and sends it again.
        server.force_status = None
        config = tmp_path / "site.yaml"
        config.write_text(yaml.safe_dump({"storage": storage.model_dump(mode="json")}))
        listed = pacsai("ehr", "list", "--json", "--config", str(config))
        assert listed.returncode == 0, listed.stderr
        shown = json.loads(listed.stdout)
        assert shown["counts"] == {"pending": 0, "delivered": 0, "dead": 1}
        [dead] = shown["reports"]
        assert (dead["sr_uid"], dead["attempts"], dead["error"]) == ("1.2.3.9", 2, "HTTP 422")  # not the server's text
        assert "P1" not in listed.stdout and "forced" not in listed.stdout  # no Bundle, no endpoint text
        replay = pacsai(
            "ehr", "replay", f"E{dead['item_id']}", "--user", "rita", "--reason", "fixed", "--config", str(config)
        )
        assert replay.returncode == 0 and "replayed" in replay.stdout, replay.stderr
        [row] = outbox.reports()
        assert (row.state, row.attempts, row.waits) == ("pending", 0, 0)
        work.send_round()
        assert [r.state for r in outbox.reports()] == ["delivered"]
        [event] = [e for e in ledger.audit.events() if e.type == "ehr_report_replayed"]
        assert (event.actor, event.study_uid, event.sop_instance_uid, event.job_id) == (
            "user:rita",
            "1.2.3",
            "1.2.3.9",
            7,
        )
        assert event.detail == {"item_id": dead["item_id"], "attempts": 2, "reason": "fixed"}
        again = pacsai("ehr", "replay", f"E{dead['item_id']}", "--config", str(config))
        assert again.returncode == 1 and "not dead" in again.stdout  # delivered: left as it is
    finally:
        client.close()
        outbox.close()
