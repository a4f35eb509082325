"""Model versions through the service layer (``api.operations``) over a real SQLite ledger, and
the ``pacsai models show|promote|rollback`` commands and REST routes over it (issue 17)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from rich.console import Console

from actors import cli
from actors._cli_render import format_rollout, render_card
from api.app import create_app
from api.auth import issue_token
from api.deployment import build_context
from api.operations import Conflict, InvalidArgument, NotFound, Operations
from core.config import AppConfig, LedgerConfig, StorageConfig, parse_config
from core.errors import DependencyUnavailable
from core.identifiers import DEFAULT_KEY
from core.records import Finding, Prediction
from core.rollout import READER_AGREEMENT_NOTE, HaltCause, compare
from core.types import AuditEventType, CodedTerm
from state.ledger import Ledger, open_ledger

FAMILY = "chest_xray"
TERM = CodedTerm("1", "99X", "x")


class FakeModels:
    """A ``ModelControl`` with the applications given deployed (``None``: Ray not reachable)."""

    def __init__(self, apps: dict[str, str] | None) -> None:
        self.apps = apps

    def list(self) -> dict[str, str]:
        if self.apps is None:
            raise DependencyUnavailable("ray", "no running Ray")
        return dict(self.apps)

    def deploy(self, family: str) -> list[str]:
        raise AssertionError("not used")

    def remove(self, family: str) -> list[str]:
        raise AssertionError("not used")


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def raw_config(tmp_path, **extra: Any) -> dict[str, Any]:
    entry = {
        "name": "cxr",
        "version": "1.0",
        "weights": "w.pt",
        "demo": True,  # no sha256 pinned (issue 13)
        "input": {"spatial_size": [8, 8], "channels": 1},
        "findings": [{"key": "edema"}],
        "card": {"description": "chest radiograph triage", "intended_use": "worklist priority"},
        "versions": {
            "2.0": {"weights": "w2.pt", "traffic": {"mode": "canary", "percent": 10}},
            "3.0": {"traffic": {"mode": "shadow"}, "card": {"license": "CC-BY-4.0"}},
        },
    }
    storage = StorageConfig(var_dir=str(tmp_path / "var"), ledger=LedgerConfig())
    return {
        "storage": storage.model_dump(),
        "models": {FAMILY: entry, "bone_fracture": {**entry, "versions": {}}},
        **extra,
    }


ALL_UP = {"model-chest_xray": "RUNNING", "model-chest_xray--2.0": "RUNNING", "model-chest_xray--3.0": "RUNNING"}


@pytest.fixture
def cfg(tmp_path) -> AppConfig:
    return parse_config(raw_config(tmp_path))


@pytest.fixture
def ledger(cfg) -> Ledger:
    led = open_ledger(cfg.storage)
    yield led
    led.close()


def ops_with(cfg: AppConfig, ledger: Ledger, apps: dict[str, str] | None = ALL_UP) -> Operations:
    return Operations(cfg, ledger, FakeModels(apps), Clock())


# ------------------------------------------------------------------------------ operations
def test_promote_makes_a_deployed_version_live_and_audits_it(cfg, ledger):
    state = ops_with(cfg, ledger).models_promote(FAMILY, "2.0", "user:ann", " canary agreed ")
    assert state.live is not None and (state.live.version, state.live.reason) == ("2.0", "canary agreed")
    assert [(h.version, h.cause) for h in state.halted] == [("1.0", HaltCause.SUPERSEDED)]
    [event] = [e for e in ledger.audit.events() if e.type == AuditEventType.MODEL_PROMOTED.value]
    assert event.actor == "user:ann" and event.detail["previous"] == "1.0"


def test_promote_refuses_unknown_families_and_versions_naming_the_field(cfg, ledger):
    ops = ops_with(cfg, ledger)
    with pytest.raises(NotFound, match=r"^family: got 'brain'; expected one of \['bone_fracture', 'chest_xray'\]"):
        ops.models_promote("brain", "2.0", "user:ann")
    with pytest.raises(NotFound, match=r"^version: got '9\.0'; expected one of \['1\.0', '2\.0', '3\.0'\]"):
        ops.models_promote(FAMILY, "9.0", "user:ann")
    with pytest.raises(InvalidArgument, match="^family: ") as bad:
        ops.models_promote("chest xray", "2.0", "user:ann")
    assert bad.value.field == "family"
    with pytest.raises(InvalidArgument) as bad:
        ops.models_rollback(FAMILY, "", "user:ann")
    assert bad.value.field == "version"
    with pytest.raises(InvalidArgument) as bad:
        ops.models_promote(FAMILY, "2.0", "user:ann", "bad\x00reason")
    assert bad.value.field == "reason"


def test_promote_refuses_the_live_version_and_a_version_not_deployed(cfg, ledger):
    with pytest.raises(Conflict, match="1.0 is live already"):
        ops_with(cfg, ledger).models_promote(FAMILY, "1.0", "user:ann")
    with pytest.raises(Conflict, match=r"application model-chest_xray--2\.0 is not deployed"):
        ops_with(cfg, ledger, {"model-chest_xray": "RUNNING"}).models_promote(FAMILY, "2.0", "user:ann")
    failed = {**ALL_UP, "model-chest_xray--2.0": "ApplicationStatus.DEPLOY_FAILED"}
    with pytest.raises(Conflict, match="is ApplicationStatus.DEPLOY_FAILED"):
        ops_with(cfg, ledger, failed).models_promote(FAMILY, "2.0", "user:ann")
    with pytest.raises(DependencyUnavailable):
        ops_with(cfg, ledger, None).models_promote(FAMILY, "2.0", "user:ann")
    assert ledger.models.rollout(FAMILY).live is None  # nothing changed


def test_rollback_goes_back_and_halts_the_version_rolled_back_from(cfg, ledger):
    ops = ops_with(cfg, ledger)
    ops.models_promote(FAMILY, "2.0", "user:ann")
    state = ops.models_rollback(FAMILY, "1.0", "user:bob", "false positives")
    assert state.live is not None and state.live.version == "1.0"
    assert [(h.version, h.cause, h.reason) for h in state.halted] == [("2.0", HaltCause.ROLLED_BACK, "false positives")]
    [event] = [e for e in ledger.audit.events() if e.type == AuditEventType.MODEL_ROLLED_BACK.value]
    assert event.detail["from"] == ["2.0"]


def test_rolling_back_to_the_live_version_halts_its_canary_once(cfg, ledger):
    ops = ops_with(cfg, ledger, {})  # the live one need not be checked: it serves already
    state = ops.models_rollback(FAMILY, "1.0", "user:bob", "canary misbehaves")
    assert [h.version for h in state.halted] == ["2.0"]  # the shadow keeps running
    with pytest.raises(Conflict, match="nothing|expected something to roll back from"):
        ops.models_rollback(FAMILY, "1.0", "user:bob")


def test_show_gives_the_card_of_every_version(cfg, ledger):
    ops = ops_with(cfg, ledger, {"model-chest_xray": "RUNNING", "model-chest_xray--3.0": "RUNNING"})
    live = Prediction(FAMILY, "cxr", "1.0", (Finding("edema", TERM, 0.9, 0.5),), ("1.2.3.1",))
    shadow = Prediction(FAMILY, "cxr", "3.0", (Finding("edema", TERM, 0.2, 0.5),), ("1.2.3.1",))
    ledger.models.record_shadow(1, "1.2.3", FAMILY, "1.0", "3.0", shadow, compare(live, shadow), 10.0)
    card = ops.models_show(FAMILY)
    assert (card.family, card.live, card.live_set) == (FAMILY, "1.0", None)
    versions = {v.version: v for v in card.versions}
    assert [v.version for v in card.versions] == ["1.0", "2.0", "3.0"]
    assert versions["1.0"].card.intended_use == "worklist priority"
    assert versions["3.0"].card.license == "CC-BY-4.0"
    assert [versions[v].deployed for v in ("1.0", "2.0", "3.0")] == [True, False, True]
    assert [versions[v].traffic_now for v in ("1.0", "2.0", "3.0")] == ["live", "canary 10%", "shadow"]
    assert versions["3.0"].observed.shadow is not None and versions["3.0"].observed.shadow.agreement_rate == 0.0
    assert versions["1.0"].observed.reader_agreement_note == READER_AGREEMENT_NOTE
    assert all(v.deployed is None for v in ops_with(cfg, ledger, None).models_show(FAMILY).versions)
    assert all(v.deployed is None for v in Operations(cfg, ledger).models_show(FAMILY).versions)
    with pytest.raises(NotFound, match="^family: "):
        ops.models_show("brain")


# ------------------------------------------------------------------------------------- CLI
def _render(renderable: Any) -> str:
    console = Console(width=160, record=True)
    console.print(renderable)
    return console.export_text()


def test_the_card_is_rendered_with_declared_and_observed_facts(cfg, ledger):
    ops = ops_with(cfg, ledger)
    ops.models_promote(FAMILY, "2.0", "user:ann", "canary agreed")
    text = _render(render_card(ops.models_show(FAMILY)))
    assert "chest_xray: live 2.0 (set by user:ann" in text and "canary agreed" in text
    assert "halted (superseded)" in text
    assert "intended use: worklist priority" in text and "licence: CC-BY-4.0" in text
    assert "training data: not declared" in text
    assert f"agreement with readers: {READER_AGREEMENT_NOTE}" in text
    assert "model-chest_xray--3.0" in text


def test_a_rollout_change_is_printed_with_what_is_halted(cfg, ledger):
    state = ops_with(cfg, ledger).models_rollback(FAMILY, "1.0", "user:bob", "bad canary")
    assert format_rollout(state, "rolled back") == (
        "chest_xray: 1.0 is live (rolled back by user:bob)\n  halted 2.0 (rolled_back by user:bob: bad canary)"
    )


def test_the_commands_parse_with_their_arguments():
    parser = cli._parser()
    args = parser.parse_args(["models", "promote", FAMILY, "2.0", "--reason", "why", "--user", "ann"])
    assert (args.func, args.family, args.version, args.reason, args.user) == (
        cli.cmd_models_promote,
        FAMILY,
        "2.0",
        "why",
        "ann",
    )
    args = parser.parse_args(["models", "rollback", FAMILY, "1.0"])
    assert (args.func, args.reason) == (cli.cmd_models_rollback, "")
    args = parser.parse_args(["models", "show", FAMILY, "--json"])
    assert (args.func, args.json) == (cli.cmd_models_show, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["models", "promote", FAMILY])  # the version is required


def test_the_commands_run_through_the_operations(cfg, ledger, monkeypatch, capsys):
    ops = ops_with(cfg, ledger)
    monkeypatch.setattr(cli, "_operations", lambda args: ops)  # no config file, no Ray
    assert cli.main(["models", "promote", FAMILY, "2.0", "--user", "ann"]) == 0
    assert capsys.readouterr().out.startswith("chest_xray: 2.0 is live (promoted by user:ann)")
    assert cli.main(["models", "show", FAMILY, "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["live"] == "2.0" and [v["version"] for v in card["versions"]] == ["1.0", "2.0", "3.0"]
    assert cli.main(["models", "rollback", FAMILY, "9.9"]) == 1
    assert "NotFound: version: got '9.9'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ REST
@pytest.fixture
def api(tmp_path, cfg, ledger):
    api_cfg = parse_config(raw_config(tmp_path, api={"allow_plaintext": True}, listener={"min_free_bytes": 0}))
    ctx = build_context(api_cfg, DEFAULT_KEY, models=FakeModels(ALL_UP))
    client = TestClient(create_app(ctx), base_url="http://127.0.0.1")

    def headers(scope: str) -> dict[str, str]:
        text, _ = issue_token(ctx.ledger.tokens, f"t-{scope}", [scope], None, "test", time.time())
        return {"Authorization": f"Bearer {text}"}

    yield client, headers
    client.close()
    ctx.close()


def test_the_routes_show_promote_and_roll_back(api):
    client, headers = api
    operate, read = headers("operate"), headers("read")
    r = client.post(f"/api/v1/models/{FAMILY}/versions/2.0/promote", json={"reason": "agreed"}, headers=operate)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["live"]["version"] == "2.0" and body["halted"][0] == {
        "version": "1.0",
        "cause": "superseded",
        "actor": "token:t-operate",
        "at": body["halted"][0]["at"],
        "reason": "2.0 promoted",
    }
    card = client.get(f"/api/v1/models/{FAMILY}", headers=read).json()
    assert card["live"] == "2.0" and card["live_set"]["actor"] == "token:t-operate"
    assert card["versions"][2]["traffic"]["mode"] == "shadow" and card["versions"][0]["card"]["description"]
    r = client.post(f"/api/v1/models/{FAMILY}/versions/1.0/rollback", headers=operate)  # no body: no reason
    assert r.status_code == 200 and r.json()["halted"][0]["version"] == "2.0"


def test_the_routes_refuse_with_problem_details(api):
    client, headers = api
    r = client.post(f"/api/v1/models/{FAMILY}/versions/2.0/promote", json={}, headers=headers("read"))
    assert r.status_code == 403
    r = client.post(f"/api/v1/models/{FAMILY}/versions/9.0/promote", json={}, headers=headers("operate"))
    assert r.status_code == 404 and r.json()["detail"].startswith("version: got '9.0'")
    r = client.post(f"/api/v1/models/{FAMILY}/versions/1.0/promote", json={}, headers=headers("operate"))
    assert r.status_code == 409
    assert client.get("/api/v1/models/brain", headers=headers("read")).status_code == 404
    schema = client.get("/openapi.json").json()
    assert {"/api/v1/models/{family}/versions/{version}/promote", "/api/v1/models/{family}"} <= set(schema["paths"])
