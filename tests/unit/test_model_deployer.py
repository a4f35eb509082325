"""actors.deployer: the model applications deploy in the background, in order, and report
their readiness (no Ray: the deploy and status functions are fakes)."""

from __future__ import annotations

import threading

import pytest

from actors.deployer import MODELS, ModelDeployer


def test_applications_deploy_in_order_and_each_ready_one_is_announced():
    deployed: list[str] = []
    announced: list[str] = []
    steps: list[str] = []
    deployer = ModelDeployer(
        {"model-a": "app-a", "model-b": "app-b"},
        lambda name, app: deployed.append(f"{name}={app}"),
        prepare=lambda: steps.append("serve started"),
        on_ready=announced.append,
    ).start()
    deployer.wait(10)
    assert steps == ["serve started"]
    assert deployed == ["model-a=app-a", "model-b=app-b"] and announced == ["model-a", "model-b"]
    assert deployer.done and deployer.error == "" and deployer.elapsed_s is not None


def test_health_shows_each_application_deploying_running_or_failed():
    release = threading.Event()
    deployer = ModelDeployer({"model-a": 1, "model-b": 2}, lambda name, app: release.wait(10)).start()
    early = deployer.health({"model-a": "ApplicationStatus.DEPLOYING"}, pid=7)
    assert early.actor == MODELS and early.status.value == "ok"  # deploying is not a failure
    assert ModelDeployer.deploying(early) == ["model-a", "model-b"]
    assert (early.processed, early.failures, early.in_flight) == (0, 0, 2)
    release.set()
    deployer.wait(10)
    late = deployer.health({"model-a": "ApplicationStatus.RUNNING", "model-b": "ApplicationStatus.UNHEALTHY"}, pid=7)
    assert ModelDeployer.deploying(late) == [] and late.status.value == "failing"
    assert (late.processed, late.failures, late.in_flight) == (1, 1, 0)
    assert [lp.last_error for lp in late.loops] == ["", "unhealthy"]


def test_a_failed_deployment_is_reported_and_raised_by_wait_and_the_rest_is_not_deployed():
    def deploy(name: str, app: object) -> None:
        if name == "model-a":
            raise RuntimeError("replica cannot start")

    deployer = ModelDeployer({"model-a": 1, "model-b": 2}, deploy, on_ready=lambda n: None).start()
    with pytest.raises(RuntimeError, match="replica cannot start"):
        deployer.wait(10)
    assert deployer.error == "RuntimeError: replica cannot start"
    health = deployer.health({}, pid=7)
    assert health.status.value == "failing" and health.failures == 2
    assert "not deployed (RuntimeError: replica cannot start)" in health.loops[1].last_error


def test_wait_times_out_naming_what_is_not_running():
    release = threading.Event()
    deployer = ModelDeployer({"model-a": 1}, lambda name, app: release.wait(10)).start()
    with pytest.raises(TimeoutError, match="model-a"):
        deployer.wait(0.05)
    release.set()
    deployer.wait(10)


def test_a_failing_wake_up_does_not_stop_the_deployment():
    def on_ready(name: str) -> None:
        raise OSError("ledger busy")

    deployer = ModelDeployer({"model-a": 1, "model-b": 2}, lambda name, app: None, on_ready=on_ready).start()
    deployer.wait(10)
    assert deployer.error == ""


def test_a_cancelled_deployment_deploys_nothing_more():
    entered, gate = threading.Event(), threading.Event()
    deployed: list[str] = []

    def deploy(name: str, app: object) -> None:
        entered.set()
        gate.wait(10)
        deployed.append(name)

    deployer = ModelDeployer({"model-a": 1, "model-b": 2}, deploy).start()
    assert entered.wait(10)
    deployer.cancel()
    gate.set()
    deployer.wait(10)
    assert deployed == ["model-a"]


def test_pacsai_status_shows_the_models_row_deploying_then_failing():
    from rich.console import Console

    from actors._cli_render import render_status
    from core.health import HealthStatus
    from core.status import LedgerStatus, QuarantineCounts, StageRecord

    release = threading.Event()
    deployer = ModelDeployer({"model-a": 1, "model-b": 2}, lambda name, app: release.wait(10)).start()

    def shown(statuses: dict[str, str]) -> str:
        health = deployer.health(statuses, pid=7)
        report = LedgerStatus(
            {}, {}, 0, None, 0, QuarantineCounts(0, 0, 0, {}), 0, (StageRecord(health, 100.0, health.status),)
        )
        console = Console(width=200, record=True)
        console.print(render_status(report, 101.0))
        return console.export_text()

    text = shown({"model-a": "ApplicationStatus.RUNNING"})
    assert "deploying: model-b" in text and HealthStatus.OK.value in text
    release.set()
    deployer.wait(10)
    text = shown({"model-a": "ApplicationStatus.RUNNING", "model-b": "ApplicationStatus.DEPLOY_FAILED"})
    assert "model-b: deploy_failed" in text and "failing" in text and "deploying" not in text
