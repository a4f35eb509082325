"""The inference stage with versions side by side (issue 17), over a real SQLite ledger and fake
Serve applications: the assigned version's answer is the result, shadows are only stored and
compared, a shadow failure is an audit event, and a family without versions runs as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors.inference import InferenceWork
from core.config import LedgerConfig, RoutingConfig, StorageConfig, parse_config
from core.errors import DependencyUnavailable, ModelError
from core.job import Job, JobRecord
from core.ledger import CoverStudy
from core.records import Finding, InferenceRequest, ModelOutput, ModelTask, Prediction, Route
from core.rollout import HaltCause, canary_bucket
from core.routing import Router
from core.types import AuditEventType, CodedTerm, InstanceMeta, JobState
from state.ledger import Ledger, open_ledger
from tests.fakes import FakeClock

FAMILY = "chest_xray"
TERM = CodedTerm("1", "99X", "x")


class FakeResponse:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.cancelled = False

    def result(self, timeout_s: float | None = None) -> ModelOutput:
        self.timeout_s = timeout_s
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def cancel(self) -> None:
        self.cancelled = True


class FakeApp:
    """One Serve application: answers each request with ``edema`` at ``probability``."""

    def __init__(self, version: str, probability: float, fails: Exception | None = None) -> None:
        self.version, self.probability, self.fails = version, probability, fails
        self.requests: list[InferenceRequest] = []
        self.responses: list[FakeResponse] = []

    def remote(self, request: InferenceRequest) -> FakeResponse:
        self.requests.append(request)
        if self.fails is not None:
            self.responses.append(FakeResponse(self.fails))
        else:
            finding = Finding("edema", TERM, self.probability, 0.5)
            uids = tuple(u for u, _ in request.instances)
            self.responses.append(
                FakeResponse(ModelOutput(Prediction(request.family, "cxr", self.version, (finding,), uids)))
            )
        return self.responses[-1]


class Work(InferenceWork):
    """``InferenceWork`` with fake Serve applications by name (none: not deployed)."""

    def __init__(self, apps: dict[str, FakeApp], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.apps = apps

    def _handle(self, app: str) -> Any:
        if app not in self.apps:
            raise DependencyUnavailable("model:" + app.removeprefix("model-"), "no such application")
        return self.apps[app]


def models(versions: dict[str, Any] | None = None) -> dict:
    entry = {
        "name": "cxr",
        "version": "1.0",
        "weights": "w.pt",
        "demo": True,  # no sha256 pinned (issue 13)
        "input": {"spatial_size": [8, 8], "channels": 1},
        "findings": [{"key": "edema"}],
        "serve": {"request_timeout_s": 30},
        "versions": versions or {},
    }
    return dict(parse_config({"models": {FAMILY: entry}}).models)


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    led = open_ledger(StorageConfig(var_dir=str(tmp_path / "var"), ledger=LedgerConfig()))
    yield led
    led.close()


def linked_job(ledger: Ledger, tmp_path: Path, study: str = "1.2.3", modality: str = "CR", ae: str = "MOD1") -> Job:
    """A job of one instance walked to ``linked`` with a task for the family."""
    path = tmp_path / f"{study}.dcm"
    path.write_bytes(b"DICM")
    uid = study + ".1.1"
    meta = InstanceMeta(uid, "1.2.840.10008.5.1.4.1.1.1", study, study + ".1", modality, "1.2.840.10008.1.2.1",
                        str(path), "aa", 4, 10.0, ae)  # fmt: skip
    ledger.intake.record(meta, 10.0, 10.0, "t")
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 60.0, now=11.0)
    record = JobRecord(route=Route((ModelTask(FAMILY, (uid,)),), "routed"))
    for state in (JobState.COMPLETE, JobState.VALIDATED, JobState.ROUTED, JobState.LINKED):
        effects = [CoverStudy()] if state is JobState.COMPLETE else []
        ledger.jobs.transition(job, state, 11.0, record=record, effects=effects)
        [job] = ledger.jobs.lease(state, "w", 1, 60.0, now=11.0)
    return job


def run(ledger: Ledger, cfg_models: dict, apps: dict[str, FakeApp], job: Job) -> Job:
    work = Work(apps, ledger, cfg_models, Router(RoutingConfig(), list(cfg_models)), "stage:inference", (), FakeClock())
    work(job)
    return ledger.jobs.get(job.job_id)


def audit(ledger: Ledger, study: str = "1.2.3") -> list:
    return ledger.audit.events(study)


def test_a_family_without_versions_runs_as_before(ledger, tmp_path):
    app = FakeApp("1.0", 0.9)
    done = run(ledger, models(), {"model-chest_xray": app}, linked_job(ledger, tmp_path))
    assert done.state is JobState.INFERRED
    [pred] = done.record.inference.predictions
    assert pred.model_version == "1.0" and len(app.requests) == 1
    [inferred] = [e for e in audit(ledger) if e.type == AuditEventType.INFERRED.value]
    assert "shadow" not in inferred.detail and "traffic" not in inferred.detail
    assert inferred.detail["version"] == "1.0"


def test_a_shadow_is_stored_and_compared_but_never_enters_the_result(ledger, tmp_path):
    cfg_models = models({"2.0": {"traffic": {"mode": "shadow"}, "serve": {"request_timeout_s": 7}}})
    apps = {"model-chest_xray": FakeApp("1.0", 0.9), "model-chest_xray--2.0": FakeApp("2.0", 0.2)}
    done = run(ledger, cfg_models, apps, linked_job(ledger, tmp_path))
    [pred] = done.record.inference.predictions
    assert pred.model_version == "1.0"  # the shadow's answer is not the job's
    assert [a.responses[0].timeout_s for a in apps.values()] == [30, 7]  # each version's own timeout
    assert len(apps["model-chest_xray--2.0"].requests) == 1
    [shadow] = ledger.models.shadow_predictions(FAMILY, "2.0", "1.2.3")
    assert shadow.model_version == "2.0" and shadow.heatmaps == ()
    summary = ledger.models.shadow_summary(FAMILY, "2.0")
    assert (summary.n, summary.agreement_rate, summary.live_versions) == (1, 0.0, ("1.0",))
    [inferred] = [e for e in audit(ledger) if e.type == AuditEventType.INFERRED.value]
    assert (inferred.detail["version"], inferred.detail["traffic"], inferred.detail["shadow"]) == (
        "1.0",
        "live",
        ["2.0"],
    )


@pytest.mark.parametrize(
    "shadow_app",
    [None, FakeApp("2.0", 0.2, ModelError("cannot read")), FakeApp("2.0", 0.2, TimeoutError("slow"))],
    ids=["not deployed", "model error", "timeout"],
)
def test_a_failing_shadow_is_only_an_audit_event(ledger, tmp_path, shadow_app):
    cfg_models = models({"2.0": {"traffic": {"mode": "shadow"}}})
    apps = {"model-chest_xray": FakeApp("1.0", 0.9)}
    if shadow_app is not None:
        apps["model-chest_xray--2.0"] = shadow_app
    done = run(ledger, cfg_models, apps, linked_job(ledger, tmp_path))
    assert done.state is JobState.INFERRED and done.attempts == 0
    failed = [e for e in audit(ledger) if e.type == AuditEventType.INFERENCE_FAILED.value]
    assert [(e.detail["version"], e.detail["shadow"]) for e in failed] == [("2.0", True)]
    [inferred] = [e for e in audit(ledger) if e.type == AuditEventType.INFERRED.value]
    assert inferred.detail["shadow"] == []
    assert ledger.models.shadow_predictions(FAMILY, "2.0", "1.2.3") == []


def test_a_live_version_that_is_down_makes_the_job_wait_and_cancels_its_shadows(ledger, tmp_path):
    cfg_models = models({"2.0": {"traffic": {"mode": "shadow"}}})
    shadow = FakeApp("2.0", 0.2)
    apps = {"model-chest_xray": FakeApp("1.0", 0.9, TimeoutError("slow")), "model-chest_xray--2.0": shadow}
    with pytest.raises(DependencyUnavailable):
        run(ledger, cfg_models, apps, linked_job(ledger, tmp_path))
    assert [r.cancelled for r in shadow.responses] == [True]
    assert ledger.models.shadow_predictions(FAMILY, "2.0", "1.2.3") == []


def test_the_promoted_version_is_called_and_named(ledger, tmp_path):
    cfg_models = models({"2.0": {"weights": "w2.pt"}})
    ledger.models.promote(FAMILY, "2.0", "1.0", "user:ann", "", 5.0)
    apps = {"model-chest_xray": FakeApp("1.0", 0.9), "model-chest_xray--2.0": FakeApp("2.0", 0.3)}
    done = run(ledger, cfg_models, apps, linked_job(ledger, tmp_path))
    assert done.record.inference.predictions[0].model_version == "2.0"
    assert apps["model-chest_xray"].requests == []
    ledger.models.rollback(FAMILY, "1.0", ["2.0"], "user:ann", "", 6.0)
    done = run(ledger, cfg_models, apps, linked_job(ledger, tmp_path, "1.2.4"))  # read afresh per job
    assert done.record.inference.predictions[0].model_version == "1.0"


def test_rule_and_canary_candidates_give_the_result_and_a_halt_stops_them(ledger, tmp_path):
    cfg_models = models(
        {
            "2.0": {"traffic": {"mode": "rule", "calling_aes": ["SITE_B"]}},
            "3.0": {"traffic": {"mode": "canary", "percent": 50}},
        }
    )
    apps = {
        n: FakeApp(v, 0.5)
        for n, v in (("model-chest_xray", "1.0"), ("model-chest_xray--2.0", "2.0"), ("model-chest_xray--3.0", "3.0"))
    }
    done = run(ledger, cfg_models, apps, linked_job(ledger, tmp_path, "1.2.5", ae="SITE_B"))
    assert done.record.inference.predictions[0].model_version == "2.0"
    canary = next(f"1.2.{n}" for n in range(100, 200) if canary_bucket(FAMILY, f"1.2.{n}") < 50)
    done = run(ledger, cfg_models, apps, linked_job(ledger, tmp_path, canary))
    assert done.record.inference.predictions[0].model_version == "3.0"
    [inferred] = [e for e in audit(ledger, canary) if e.type == AuditEventType.INFERRED.value]
    assert inferred.detail["traffic"] == "canary"
    state = ledger.models.rollback(FAMILY, "1.0", ["3.0"], "user:ann", "", 7.0)
    assert state.halted[0].cause is HaltCause.ROLLED_BACK
    again = next(f"1.3.{n}" for n in range(100, 200) if canary_bucket(FAMILY, f"1.3.{n}") < 50)
    done = run(ledger, cfg_models, apps, linked_job(ledger, tmp_path, again))
    assert done.record.inference.predictions[0].model_version == "1.0"


def test_an_absent_application_is_not_asked_for_again_within_the_recheck_window(ledger, monkeypatch):
    """An AI outage: Serve says the application is absent once per window, not once per due job."""
    from ray.serve.exceptions import RayServeException

    import actors.inference as inference

    asked: list[str] = []
    now = [100.0]

    def get_app_handle(app: str) -> Any:
        asked.append(app)
        if now[0] < 200.0:
            raise RayServeException(f"Application '{app}' does not exist.")
        return FakeApp("1.0", 0.9)

    monkeypatch.setattr(inference.serve, "get_app_handle", get_app_handle)
    monkeypatch.setattr(inference.time, "monotonic", lambda: now[0])
    cfg_models = models()
    work = InferenceWork(ledger, cfg_models, Router(RoutingConfig(), list(cfg_models)), "stage:inference")
    for step in (0.0, 0.3, 0.6):  # three due jobs within one window: Serve asked once
        now[0] = 100.0 + step
        with pytest.raises(DependencyUnavailable, match="does not exist"):
            work._handle("model-chest_xray")
    assert asked == ["model-chest_xray"]
    now[0] = 100.0 + inference.ABSENT_RECHECK_S + 0.01  # the window is over: asked again
    with pytest.raises(DependencyUnavailable):
        work._handle("model-chest_xray")
    now[0] = 200.0  # deployed again: the handle is taken and kept
    assert isinstance(work._handle("model-chest_xray"), FakeApp)
    assert work._handle("model-chest_xray") is work._handle("model-chest_xray")
    assert len(asked) == 3
