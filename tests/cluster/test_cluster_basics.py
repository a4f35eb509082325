"""The multi-node harness itself: nodes register under their names, custom resources place actors on
the node that has them, a killed node takes its actors down until it restarts, a head restart with
GCS fault tolerance keeps the workers, and stop() leaves nothing behind and touches no other Ray."""

from __future__ import annotations

import pytest

from demo.raycluster import DriverError, LocalRayCluster, NodeSpec
from tests.cluster.harness import CONNECT, WHERE_ACTOR, require_ray_cli


def actor_state(handle: str) -> str:
    """Driver expression: the GCS's state of the actor ``handle`` (ALIVE, RESTARTING, DEAD...)."""
    return f"ray._private.state.actors({handle}._actor_id.hex())['State']"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_nodes_register_under_their_names(ray_cluster: LocalRayCluster) -> None:
    ids = ray_cluster.node_ids()
    assert set(ids) == set(ray_cluster.names)
    assert ray_cluster.alive_nodes() == {node_id: name for name, node_id in ids.items()}


def test_cell_resource_places_an_actor_on_its_node(ray_cluster: LocalRayCluster) -> None:
    with ray_cluster.driver() as driver:
        driver.exec(CONNECT + WHERE_ACTOR)
        driver.exec(
            "a = Where.options(resources={'pacsai_cell_a': 0.001}).remote()\n"
            "b = Where.options(resources={'pacsai_cell_b': 0.001}).remote()\n"
        )
        assert driver.eval("ray.get(a.node.remote(), timeout=120)") == ray_cluster.node_id("ingress-a")
        assert driver.eval("ray.get(b.node.remote(), timeout=120)") == ray_cluster.node_id("model-b")


def test_killed_node_takes_its_actors_down_until_it_restarts(ray_cluster: LocalRayCluster) -> None:
    """Two restartable actors pinned to ingress-a. While the node is down (no other node has
    pacsai_cell_a) a call to one without task retries fails fast with ActorUnavailableError; a call
    to one with ``max_task_retries=-1`` waits, and completes on the restarted node."""
    with ray_cluster.driver() as driver:
        driver.exec(CONNECT + WHERE_ACTOR)
        driver.exec(
            "pinned = {'resources': {'pacsai_cell_a': 0.001}, 'max_restarts': -1}\n"
            "a = Where.options(**pinned).remote()\n"
            "b = Where.options(**pinned, max_task_retries=-1).remote()\n"
        )
        old = ray_cluster.node_id("ingress-a")
        assert driver.eval("ray.get([a.node.remote(), b.node.remote()], timeout=120)") == [old, old]
        processes = ray_cluster.pids("ingress-a")
        assert ray_cluster.raylet_pid("ingress-a") in processes
        new = None
        try:
            ray_cluster.kill_node("ingress-a")
            assert not [pid for pid in processes if _alive(pid)], "the node's processes must die with it"
            ray_cluster.wait_for(
                lambda: old not in ray_cluster.alive_nodes(), timeout=120, what="the GCS marks ingress-a dead"
            )
            ray_cluster.wait_for(
                lambda: driver.eval(f"[{actor_state('a')}, {actor_state('b')}]") == ["RESTARTING"] * 2,
                timeout=120,
                what="both actors wait for a node with pacsai_cell_a",
            )
            with pytest.raises(DriverError) as unavailable:
                driver.eval("ray.get(a.node.remote(), timeout=120)")
            assert unavailable.value.type == "ActorUnavailableError"
            driver.exec("pending = b.node.remote()")
            with pytest.raises(DriverError) as waiting:
                driver.eval("ray.get(pending, timeout=3)")
            assert waiting.value.type == "GetTimeoutError"
        finally:
            if "ingress-a" not in ray_cluster.node_ids():
                new = ray_cluster.restart_node("ingress-a")
        assert new is not None and new != old
        assert driver.eval("ray.get(pending, timeout=120)") == new

        def a_answers() -> str | None:
            """``a`` has no task retries: until the driver learns it is alive again a call fails
            fast, as above (b's retried call may finish first: seen on a loaded machine)."""
            try:
                return driver.eval("ray.get(a.node.remote(), timeout=120)")
            except DriverError as exc:
                if exc.type != "ActorUnavailableError":
                    raise
                return None

        assert ray_cluster.wait_for(a_answers, timeout=120, what="a answers from the new node") == new
        assert driver.eval(f"[{actor_state('a')}, {actor_state('b')}]") == ["ALIVE"] * 2
    assert ray_cluster.alive_nodes()[new] == "ingress-a"


def test_head_restart_with_gcs_fault_tolerance_keeps_workers(ray_cluster: LocalRayCluster, tmp_path) -> None:
    """A second cluster (no auth this time): the head restarts on its port, recovers the GCS tables
    from RocksDB, and the worker node, with the detached actor on it, lives on. Its stop() must leave
    nothing and must not touch the session's cluster."""
    require_ray_cli()
    others = {name: ray_cluster.raylet_pid(name) for name in ray_cluster.names}
    cluster = LocalRayCluster([NodeSpec("ingress-a", {"pacsai_cell_a": 1})], gcs_fault_tolerance=True)
    with cluster:
        worker = cluster.node_id("ingress-a")
        worker_processes = cluster.pids("ingress-a")
        with cluster.driver() as driver:
            driver.exec(
                "import ray\nray.init(namespace='ft', logging_level='ERROR', log_to_driver=False)\n" + WHERE_ACTOR
            )
            driver.exec(
                "a = Where.options(name='keeper', lifetime='detached', resources={'pacsai_cell_a': 0.001}).remote()"
            )
            assert driver.eval("ray.get(a.node.remote(), timeout=120)") == worker
        old_head = cluster.node_id("head")
        cluster.restart_head()
        assert cluster.node_id("head") != old_head
        assert cluster.node_id("ingress-a") == worker
        assert worker_processes <= cluster.pids("ingress-a"), "the worker node's processes must survive"
        assert cluster.alive_nodes() == {cluster.node_id("head"): "head", worker: "ingress-a"}
        with cluster.driver() as driver:
            driver.exec("import ray\nray.init(namespace='ft', logging_level='ERROR', log_to_driver=False)")
            assert driver.eval("ray.get(ray.get_actor('keeper').node.remote(), timeout=120)") == worker
        everything = cluster.pids()
    assert not cluster.pids()
    assert not [pid for pid in everything if _alive(pid)]
    assert not cluster.root.exists()
    assert {name: ray_cluster.raylet_pid(name) for name in ray_cluster.names} == others
    assert all(_alive(pid) for pid in others.values())
