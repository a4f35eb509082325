"""Ray's token authentication and mutual TLS on a real multi-node cluster.

Token auth (``RAY_AUTH_MODE=token``): a driver with the token runs work on a worker node; a driver
with no token or a wrong one is refused by the GCS; a node without it cannot join; a worker node's
raylet refuses gRPC calls without it (the token guards node-to-node ports, not just the GCS).
TLS (``RAY_USE_TLS=1``): the cluster works, and a plain client gets no connection at all.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.raycluster import FAIL_FAST_CONNECT, ClusterError, LocalRayCluster, NodeSpec, node_ip
from tests.cluster.harness import AUTH_REFUSED, CONNECT, make_node_tls, require_ray_cli

TASK_ON_MODEL_NODE = (
    CONNECT
    + """
@ray.remote(num_cpus=0, resources={"model": 0.001})
def where():
    return ray.get_runtime_context().get_node_id()
print("RAN ON", ray.get(where.remote(), timeout=120))
"""
)

RAYLET_CALLS = """
import json, os, sys
import grpc
from ray.core.generated import node_manager_pb2, node_manager_pb2_grpc

address, token = sys.argv[1], open(os.environ["TOKEN_FILE"]).read()
tls = os.environ.get("TLS_FILES")
results = {}
for label, metadata, files in (
    ("no token", (), tls),
    ("wrong token", (("authorization", "Bearer wrong-" + token[6:]),), tls),
    ("token", (("authorization", "Bearer " + token),), tls),
    ("token, plaintext", (("authorization", "Bearer " + token),), None),
):
    if files:
        ca, cert, key = (open(path, "rb").read() for path in files.split(","))
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert))
    else:
        channel = grpc.insecure_channel(address)
    stub = node_manager_pb2_grpc.NodeManagerServiceStub(channel)
    try:
        stub.GetResourceLoad(node_manager_pb2.GetResourceLoadRequest(), metadata=metadata, timeout=20)
        results[label] = "OK"
    except grpc.RpcError as error:
        results[label] = error.code().name
    channel.close()
print(json.dumps(results))
"""
"""Direct gRPC calls to a raylet's node-manager port, as another node would make them."""


def _raylet_calls(cluster: LocalRayCluster, node: str) -> dict[str, str]:
    assert cluster.token_file is not None
    env = {"TOKEN_FILE": str(cluster.token_file)}
    if cluster.tls is not None:
        env["TLS_FILES"] = f"{cluster.tls.ca_certificate},{cluster.tls.certificate},{cluster.tls.private_key}"
    address = f"{cluster.node_ip}:{cluster.ports(node)['node_manager']}"
    done = cluster.run_driver(RAYLET_CALLS.replace("sys.argv[1]", repr(address)), token=None, extra_env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


# ---------------------------------------------------------------- token authentication
def test_driver_with_the_token_runs_a_task_on_a_worker_node(ray_cluster: LocalRayCluster) -> None:
    done = ray_cluster.run_driver(TASK_ON_MODEL_NODE)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"RAN ON {ray_cluster.node_id('model-b')}" in done.stdout


@pytest.mark.parametrize("token", [None, "wrong"], ids=["no token", "wrong token"])
def test_driver_without_the_right_token_is_refused(ray_cluster: LocalRayCluster, token: str | None) -> None:
    if token is not None:
        token = secrets.token_hex(32)
    done = ray_cluster.run_driver(TASK_ON_MODEL_NODE, token=token, extra_env=FAIL_FAST_CONNECT)
    assert done.returncode == 1
    assert "RAN ON" not in done.stdout
    assert f"ray.exceptions.AuthenticationError: RPC error: {AUTH_REFUSED}" in done.stderr
    assert "ConnectionError: Failed to connect to Ray cluster at" in done.stderr
    if token is None:
        assert "RAY_AUTH_MODE is currently 'disabled'" in done.stderr


@pytest.mark.parametrize("token", [None, "wrong"], ids=["no token", "wrong token"])
def test_node_without_the_right_token_cannot_join(ray_cluster: LocalRayCluster, token: str | None) -> None:
    if token is not None:
        token = secrets.token_hex(32)
    before = ray_cluster.alive_nodes()
    rogue = NodeSpec(f"rogue-{secrets.token_hex(3)}", {"pacsai_cell_a": 1})
    with pytest.raises(ClusterError, match=AUTH_REFUSED):
        ray_cluster.add_node(rogue, token=token, extra_env=FAIL_FAST_CONNECT, timeout=120)
    assert rogue.name not in ray_cluster.names
    assert ray_cluster.alive_nodes() == before


def test_worker_raylet_refuses_calls_without_the_token(ray_cluster: LocalRayCluster) -> None:
    assert _raylet_calls(ray_cluster, "ingress-a") == {
        "no token": "UNAUTHENTICATED",
        "wrong token": "UNAUTHENTICATED",
        "token": "OK",
        "token, plaintext": "OK",
    }


# ---------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayCluster]:
    """A head and one worker with mutual TLS and token auth, on a CA made for this module."""
    require_ray_cli()
    tls = make_node_tls(Path(tmp_path_factory.mktemp("ray-tls")), ["127.0.0.1", node_ip()])
    cluster = LocalRayCluster(
        [NodeSpec("model-b", {"model": 1})], auth_token=secrets.token_hex(32), tls=tls, object_store_memory=80 << 20
    )
    with cluster:
        yield cluster


def test_tls_cluster_runs_a_task_on_a_worker_node(tls_cluster: LocalRayCluster) -> None:
    done = tls_cluster.run_driver(TASK_ON_MODEL_NODE)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"RAN ON {tls_cluster.node_id('model-b')}" in done.stdout


def test_plain_client_cannot_connect_to_a_tls_cluster(tls_cluster: LocalRayCluster) -> None:
    """A driver with the token but without TLS never gets a gRPC answer: the GCS drops the
    connection at the TLS handshake (and says so in its log)."""
    done = tls_cluster.run_driver(TASK_ON_MODEL_NODE, tls=False, extra_env=FAIL_FAST_CONNECT)
    assert done.returncode == 1
    assert "RAN ON" not in done.stdout
    assert "Timed out while waiting for GCS to become available" in done.stderr
    assert "ConnectionError: Failed to connect to Ray cluster at" in done.stderr
    gcs_errors = (tls_cluster.session_dir("head") / "logs" / "gcs_server.err").read_text(errors="replace")
    assert "Handshake failed" in gcs_errors
    assert "WRONG_VERSION_NUMBER" in gcs_errors


def test_tls_worker_raylet_needs_tls_and_the_token(tls_cluster: LocalRayCluster) -> None:
    assert _raylet_calls(tls_cluster, "model-b") == {
        "no token": "UNAUTHENTICATED",
        "wrong token": "UNAUTHENTICATED",
        "token": "OK",
        "token, plaintext": "UNAVAILABLE",
    }
