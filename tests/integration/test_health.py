"""Health is true, and a failing dependency never ends a loop (no Ray: the loops themselves)."""

from __future__ import annotations

import threading
import time

import pytest

from actors.adapters.dimse import Listener
from actors.pipeline import wait_until
from actors.polling import Loop
from actors.supervisor import Supervisor
from core.config import ListenerConfig, StorageConfig
from core.health import ActorHealth, HealthStatus, LoopHealth
from state.ledger import open_ledger


def test_a_failing_round_is_counted_and_the_loop_goes_on():
    calls: list[int] = []

    def round_() -> int:
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionError("ledger unreachable")
        return 1

    loop = Loop("flaky", round_, 0.01).start()
    try:
        assert wait_until(lambda: loop.health().rounds >= 4, 10)
        health = loop.health()
        assert health.alive and health.failures == 2 and health.last_work_at > 0
        assert health.last_error == ""  # cleared once a round succeeds again
    finally:
        loop.stop()
    assert not loop.health().alive  # stopped means not alive: nothing claims otherwise


def test_health_reports_the_last_failure_while_it_lasts():
    loop = Loop("down", lambda: (_ for _ in ()).throw(OSError("disk gone")), 0.01).start()
    try:
        assert wait_until(lambda: loop.health().failures >= 1, 10)
        health = ActorHealth("x", 1, loops=(loop.health(),))
        assert health.alive and health.status is HealthStatus.FAILING
        assert "disk gone" in health.loops[0].last_error
    finally:
        loop.stop()


def test_an_eager_loop_runs_again_at_once_while_there_is_work():
    left = [50]

    def round_() -> int:
        if left[0]:
            left[0] -= 1
            return 1
        return 0

    loop = Loop("eager", round_, 5.0, eager=True).start()  # a 5 s period would take minutes
    try:
        assert wait_until(lambda: left[0] == 0, 5)
    finally:
        loop.stop()


def test_a_failing_idle_wait_never_ends_the_loop():
    """A stage's idle wait reads the ledger (PostgreSQL: the next job's ``not_before``); the
    ledger going down between a round and that read must not end the thread."""
    waits: list[float] = []

    def idle(wait_s: float) -> None:
        waits.append(wait_s)
        if len(waits) <= 2:
            raise ConnectionError("ledger unreachable")
        time.sleep(wait_s)

    loop = Loop("idle", lambda: 0, 0.01, idle=idle).start()
    try:
        assert wait_until(lambda: len(waits) >= 4, 10)
        health = loop.health()
        assert health.alive and health.failures == 2 and health.rounds >= 4
    finally:
        loop.stop()


def test_the_supervisor_survives_a_ledger_that_fails(tmp_path):
    ledger = open_ledger(StorageConfig(var_dir=str(tmp_path)))

    class DeadActors:
        def health(self) -> dict[str, ActorHealth]:
            return {"router": ActorHealth.unreachable("router", "ActorDiedError")}

    supervisor = Supervisor(DeadActors(), ledger)
    loop = Loop("supervisor", supervisor.run_once, 0.01).start()
    try:
        assert wait_until(lambda: loop.health().rounds >= 2, 10)
        [stage] = ledger.status.report(time.time()).stages
        assert stage.status is HealthStatus.DOWN and stage.health.actor == "router"
        ledger.db.close()  # the ledger goes away under the supervisor
        rounds = loop.health().rounds
        assert wait_until(lambda: loop.health().failures >= 2, 10)
        assert loop.health().alive and loop.health().rounds > rounds  # still looping
    finally:
        loop.stop()


def test_the_listener_reports_its_server_thread(tmp_path):
    ledger = open_ledger(StorageConfig(var_dir=str(tmp_path)))
    listener = Listener(
        ListenerConfig(port=0, min_free_bytes=0), tmp_path / "spool", tmp_path / "rejected", ledger, 1.0
    )
    listener.start()
    assert listener.serving
    server = listener._server
    threading.Thread(target=server.shutdown, daemon=True).start()  # the thread ends
    assert wait_until(lambda: not listener.serving, 10)
    health = ActorHealth("listener", 1, loops=(LoopHealth("dicom-server", listener.serving),))
    assert health.status is HealthStatus.DOWN
    listener._server = None
    ledger.close()


@pytest.mark.parametrize("alive,error,status", [(True, "", "ok"), (True, "x", "failing"), (False, "", "down")])
def test_status_of_an_actor_follows_its_loops(alive, error, status):
    loops = (LoopHealth("a", True), LoopHealth("b", alive, last_error=error))
    assert ActorHealth("x", 1, loops=loops).status == status
