"""The REST operations (``api.ops``) in process: ``create_app`` over a real SQLite ledger.

Jobs and quarantine entries are made through the ledger's repositories (``test_operations``);
callers hold real API tokens of the scopes each test names.
"""

from __future__ import annotations

import pytest

from api.operations import LIMIT_MAX, Operations
from core.auth import Scope
from core.codec import to_jsonable
from core.types import AuditEventType
from tests.integration.api_harness import ApiHarness, make_harness
from tests.integration.test_operations import FakeModels, dead_job, held_entry, received_job

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
MODELS = {
    "chest_xray": {
        "name": "cxr",
        "version": "1",
        "weights": "w.pt",
        "demo": True,  # no sha256 pinned (issue 13)
        "input": {"spatial_size": [8, 8], "channels": 1},
        "findings": [{"key": "edema"}],
    }
}


@pytest.fixture
def models() -> FakeModels:
    return FakeModels()


@pytest.fixture
def api(tmp_path, storage_for, models):
    harness = make_harness(tmp_path, storage_for("sqlite"), models=MODELS)
    harness.ctx.operations = Operations(harness.cfg, harness.ctx.ledger, models)  # Ray stands in
    yield harness
    harness.close()


def subject_of(headers: dict[str, str], api: ApiHarness) -> str:
    token_id = headers["Authorization"].split("_")[1]
    record, _ = api.ctx.ledger.tokens.get(token_id)
    return f"token:{record.name}"


def problem(res, status: int) -> dict:
    assert res.status_code == status, res.text
    assert res.headers["content-type"].startswith(PROBLEM)
    body = res.json()
    assert body["status"] == status and body["type"].startswith("urn:pacsai:problem:")
    return body


ROUTES = [
    ("GET", "/api/v1/status", None),
    ("GET", "/api/v1/jobs", None),
    ("GET", "/api/v1/jobs/dead", None),
    ("GET", "/api/v1/jobs/1", None),
    ("POST", "/api/v1/jobs/1/replay", None),
    ("GET", "/api/v1/quarantine", None),
    ("GET", "/api/v1/quarantine/Q1", None),
    ("POST", "/api/v1/quarantine/Q1/release", {"reason": "x"}),
    ("POST", "/api/v1/quarantine/Q1/discard", {"reason": "x"}),
    ("GET", "/api/v1/ai-switches", None),
    ("PUT", "/api/v1/ai-switches/modality/CR", {"enabled": False}),
    ("GET", "/api/v1/models", None),
    ("PUT", "/api/v1/models/chest_xray", None),
    ("DELETE", "/api/v1/models/chest_xray", None),
    ("GET", "/api/v1/audit", None),
    ("GET", "/api/v1/audit/verify", None),
]
WRITES = [r for r in ROUTES if r[0] != "GET"]


def test_every_route_needs_credentials(api):
    for method, path, body in ROUTES:
        res = api.client.request(method, path, json=body)
        assert problem(res, 401)["title"] == "Unauthorized", path
        assert res.headers["www-authenticate"].startswith("Bearer")
        res = api.client.request(method, path, json=body, headers={"Authorization": "Bearer pab_0_nope"})
        problem(res, 401)


def test_changes_need_operate_and_models_admin(api):
    read, operate = api.headers(Scope.READ), api.headers(Scope.OPERATE)
    for method, path, body in WRITES:
        assert "read" not in problem(api.client.request(method, path, json=body, headers=read), 403)["detail"]
    for method, path, body in WRITES:
        if "/models/" in path:
            body_ = problem(api.client.request(method, path, json=body, headers=operate), 403)
            assert "admin" in body_["detail"]
    ingest = api.headers(Scope.INGEST)
    problem(api.client.get("/api/v1/status", headers=ingest), 403)


def test_status_is_what_the_cli_prints(api):
    received_job(api.ctx.ledger, "1.2.3")
    held_entry(api.ctx.ledger, "1.2.4")
    res = api.client.get("/api/v1/status", headers=api.headers(Scope.READ))
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["jobs"]["complete"] == 1 and body["quarantine"]["held"] == 1
    assert set(body) == set(to_jsonable(api.ctx.operations.status()))


def test_jobs_are_listed_paged_and_shown_with_their_history(api):
    ids = [received_job(api.ctx.ledger, f"1.2.{k}") for k in range(3)]
    dead = dead_job(api.ctx.ledger, "1.2.9")
    read = api.headers(Scope.READ)
    page = api.client.get("/api/v1/jobs", params={"limit": 2}, headers=read).json()
    assert [j["job_id"] for j in page["items"]] == [dead, ids[2]] and page["next_before"] == ids[2]
    rest = api.client.get("/api/v1/jobs", params={"limit": 2, "before": page["next_before"]}, headers=read).json()
    assert [j["job_id"] for j in rest["items"]] == [ids[1], ids[0]]
    last = api.client.get("/api/v1/jobs", params={"limit": 2, "before": ids[0]}, headers=read).json()
    assert last == {"items": [], "next_before": None}
    only = api.client.get("/api/v1/jobs", params={"state": "complete", "study": "1.2.1"}, headers=read).json()
    assert [j["job_id"] for j in only["items"]] == [ids[1]] and only["next_before"] is None
    [died] = api.client.get("/api/v1/jobs/dead", headers=read).json()["items"]
    assert (died["job_id"], died["state"], died["dead_from"], died["reason"]) == (dead, "dead", "complete", "boom")
    detail = api.client.get(f"/api/v1/jobs/{dead}", headers=read).json()
    assert detail["job"]["job_id"] == dead
    assert [e["type"] for e in detail["history"]] == ["instance_received", "job_dead"]
    assert "job_id: got 999" in problem(api.client.get("/api/v1/jobs/999", headers=read), 404)["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/jobs?limit=0",
        f"/api/v1/jobs?limit={LIMIT_MAX + 1}",
        "/api/v1/jobs?limit=many",
        "/api/v1/jobs?before=0",
        f"/api/v1/jobs?before={2**63}",
        "/api/v1/jobs?state=sleeping",
        "/api/v1/jobs?study=1.2.x",
        "/api/v1/jobs?study=%00",
        "/api/v1/jobs/dead?limit=-1",
        "/api/v1/jobs/0",
        "/api/v1/jobs/abc",
        f"/api/v1/jobs/{2**64}",
        "/api/v1/quarantine?state=lost",
        "/api/v1/quarantine/1.2.x",
        "/api/v1/quarantine?study=abc",
        "/api/v1/audit?after=-1",
        "/api/v1/audit?limit=0",
        "/api/v1/audit?study=%C3%A9",
    ],
)
def test_junk_parameters_are_422_naming_the_field(api, path):
    body = problem(api.client.get(path, headers=api.headers(Scope.READ)), 422)
    assert body["errors"] and all(e["field"] for e in body["errors"])


@pytest.mark.parametrize(
    "query",
    [
        "limit=%C2%B2",  # "²": str.isdigit says yes, int() said ValueError (a 500)
        "offset=%D9%A3",  # an Arabic-Indic three
        "limit=" + "9" * 5000,  # int() refuses over 4,300 digits
        "offset=-1",
    ],
)
def test_qido_paging_that_is_not_ascii_digits_is_400_naming_the_parameter(api, query):
    body = problem(api.client.get(f"/dicomweb/studies?{query}", headers=api.headers(Scope.READ)), 400)
    assert body["detail"].startswith(query.split("=")[0] + ": got ")


def test_replay_is_audited_with_the_callers_subject(api):
    dead = dead_job(api.ctx.ledger, "1.2.3")
    operate = api.headers(Scope.OPERATE)
    res = api.client.post(f"/api/v1/jobs/{dead}/replay", headers=operate)
    assert res.status_code == 200 and res.json() == {"job_id": dead, "state": "complete"}
    [event] = [e for e in api.ctx.ledger.audit.events("1.2.3") if e.type == AuditEventType.JOB_REPLAYED]
    assert event.actor == subject_of(operate, api)
    assert (
        "expected a dead job" in problem(api.client.post(f"/api/v1/jobs/{dead}/replay", headers=operate), 409)["detail"]
    )
    problem(api.client.post("/api/v1/jobs/4242/replay", headers=operate), 404)
    problem(api.client.post("/api/v1/jobs/0/replay", headers=operate), 422)


def test_quarantine_is_listed_shown_released_and_discarded_audited(api):
    first, second = held_entry(api.ctx.ledger, "1.2.3"), held_entry(api.ctx.ledger, "1.2.4")
    read, operate = api.headers(Scope.READ), api.headers(Scope.OPERATE)
    listed = api.client.get("/api/v1/quarantine", headers=read).json()["items"]
    assert [e["id"] for e in listed] == [second, first] and "path" not in listed[0]
    assert listed[0]["reasons"][0]["code"] == "pixel_data_length"
    shown = api.client.get("/api/v1/quarantine/1.2.3", headers=read).json()["items"]
    assert [e["id"] for e in shown] == [first]
    problem(api.client.get("/api/v1/quarantine/Q999", headers=read), 404)
    missing = problem(api.client.post(f"/api/v1/quarantine/{first}/release", json={}, headers=operate), 422)
    assert missing["errors"][0]["field"] == "reason"
    blank = problem(api.client.post(f"/api/v1/quarantine/{first}/release", json={"reason": "  "}, headers=operate), 422)
    assert [e["field"] for e in blank["errors"]] == ["reason"]
    res = api.client.post(f"/api/v1/quarantine/{first}/release", json={"reason": "pixels verified"}, headers=operate)
    assert res.status_code == 200, res.text
    [released] = res.json()["items"]
    assert (released["state"], released["decided_by"]) == ("released", subject_of(operate, api))
    res = api.client.post(f"/api/v1/quarantine/{second}/discard", json={"reason": "test shot"}, headers=operate)
    assert res.json()["items"][0]["state"] == "discarded"
    again = api.client.post(f"/api/v1/quarantine/{second}/discard", json={"reason": "again"}, headers=operate)
    assert "got state discarded" in problem(again, 409)["detail"]
    problem(api.client.post("/api/v1/quarantine/Q999/discard", json={"reason": "x"}, headers=operate), 404)
    events = {e.type: e for e in api.ctx.ledger.audit.events()}
    assert events[AuditEventType.QUARANTINE_RELEASED].actor == subject_of(operate, api)
    assert events[AuditEventType.QUARANTINE_DISCARDED].detail["reason"] == "test shot"
    assert api.client.get("/api/v1/quarantine", headers=read).json() == {"items": []}
    every = api.client.get("/api/v1/quarantine", params={"state": "all"}, headers=read).json()["items"]
    assert {e["state"] for e in every} == {"released", "discarded"}


def test_ai_switches_are_set_listed_and_audited(api):
    read, operate = api.headers(Scope.READ), api.headers(Scope.OPERATE)
    res = api.client.put(
        "/api/v1/ai-switches/study/1.2.3", json={"enabled": False, "reason": "research"}, headers=operate
    )
    assert res.status_code == 200, res.text
    assert res.json()["actor"] == subject_of(operate, api) and res.json()["enabled"] is False
    api.client.put("/api/v1/ai-switches/modality/cr", json={"enabled": True}, headers=operate)
    listed = api.client.get("/api/v1/ai-switches", headers=read).json()
    assert [(s["scope"], s["key"], s["enabled"]) for s in listed] == [
        ("modality", "CR", True),
        ("study", "1.2.3", False),
    ]
    assert api.ctx.ledger.controls.ai_switches().studies_off == {"1.2.3"}
    [event] = [e for e in api.ctx.ledger.audit.events("1.2.3") if e.type == AuditEventType.AI_SWITCH_CHANGED]
    assert event.actor == subject_of(operate, api) and event.detail["reason"] == "research"
    for path, body, field in (
        ("/api/v1/ai-switches/study/CR", {"enabled": True}, "key"),
        ("/api/v1/ai-switches/modality/C%00R", {"enabled": True}, "key"),
        ("/api/v1/ai-switches/modality/CR", {"enabled": "maybe"}, "enabled"),
        ("/api/v1/ai-switches/modality/CR", {"enabled": True, "extra": 1}, "extra"),
    ):
        body_ = problem(api.client.put(path, json=body, headers=operate), 422)
        assert body_["errors"][0]["field"] == field, body_
    problem(api.client.put("/api/v1/ai-switches/series/1.2", json={"enabled": True}, headers=operate), 404)


def test_models_are_listed_deployed_and_removed_by_an_admin(api, models):
    admin, read = api.headers(Scope.ADMIN), api.headers(Scope.READ)
    assert api.client.get("/api/v1/models", headers=read).json() == {"items": []}
    res = api.client.put("/api/v1/models/chest_xray", headers=admin)
    assert res.json() == {"family": "chest_xray", "applications": ["model-chest_xray"]}
    assert api.client.get("/api/v1/models", headers=read).json() == {
        "items": [{"name": "model-chest_xray", "status": "RUNNING"}]
    }
    unknown = problem(api.client.put("/api/v1/models/brain_ct", headers=admin), 404)  # not in the config
    assert "family: got 'brain_ct'; expected one of ['chest_xray']" in unknown["detail"]
    problem(api.client.put("/api/v1/models/chest.xray", headers=admin), 422)
    assert api.client.delete("/api/v1/models/chest_xray", headers=admin).json()["applications"] == ["model-chest_xray"]
    problem(api.client.delete("/api/v1/models/chest_xray", headers=admin), 404)


def test_models_answer_503_where_ray_is_not_reachable(api):
    api.ctx.operations = Operations(api.cfg, api.ctx.ledger)  # as build_context leaves it: no model control
    problem(api.client.get("/api/v1/models", headers=api.headers(Scope.READ)), 503)


def test_audit_is_read_in_pages_and_verified(api):
    for k in range(3):
        received_job(api.ctx.ledger, f"1.2.{k}")
    read = api.headers(Scope.READ)
    first = api.client.get("/api/v1/audit", params={"limit": 2}, headers=read).json()
    assert [e["seq"] for e in first["items"]] == [1, 2] and first["next_after"] == 2
    rest = api.client.get("/api/v1/audit", params={"after": 2, "limit": LIMIT_MAX}, headers=read).json()
    assert rest["next_after"] is None and rest["items"][0]["seq"] == 3
    by_study = api.client.get("/api/v1/audit", params={"study": "1.2.1"}, headers=read).json()["items"]
    assert {e["study_uid"] for e in by_study} == {"1.2.1"}
    verdict = api.client.get("/api/v1/audit/verify", headers=read).json()
    assert verdict == {"intact": True, "broken_at_seq": None, "reason": ""}


def test_every_request_is_audited_with_who_made_it(api):
    operate = api.headers(Scope.OPERATE)
    api.client.put("/api/v1/ai-switches/modality/CT", json={"enabled": False}, headers=operate)
    api.client.get("/api/v1/jobs", headers=operate)
    api.client.get("/api/v1/jobs")
    api.ctx.audit.flush()
    requests = [e for e in api.ctx.ledger.audit.events() if e.type == AuditEventType.API_REQUEST]
    seen = {(e.actor, e.detail["method"], e.detail["path"], e.detail["status"]) for e in requests}
    who = subject_of(operate, api)
    assert (who, "PUT", "/api/v1/ai-switches/modality/CT", 200) in seen
    assert (who, "GET", "/api/v1/jobs", 200) in seen
    assert ("anonymous", "GET", "/api/v1/jobs", 401) in seen


def test_openapi_documents_problem_responses_of_every_operations_route(api):
    schema = api.client.get("/openapi.json").json()
    for method, path, _ in ROUTES:
        templated = path.replace("/1/", "/{job_id}/").replace("/Q1", "/{reference}")
        templated = templated.replace("/jobs/1", "/jobs/{job_id}").replace("/chest_xray", "/{family}")
        templated = templated.replace("/modality/CR", "/modality/{key}")
        operation = schema["paths"][templated][method.lower()]
        for status in ("401", "403", "422"):
            assert PROBLEM in operation["responses"][status]["content"], (templated, status)
        assert "application/json" in operation["responses"]["200"]["content"], templated
