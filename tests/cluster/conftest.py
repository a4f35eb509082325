"""A real multi-node Ray cluster on this machine (``ray start`` per node), with token auth on.

Nothing here runs Ray in pytest's own process: every driver is a subprocess
(``LocalRayCluster.driver()`` / ``run_driver()``), and the cluster's processes are found and killed
by their own marker, never by name. So these tests do not disturb a local Ray that the same process
or machine holds (``tests/integration`` keeps one for its session): ``make test`` runs them on one
xdist worker while the other runs the local-Ray tests (groups in ``tests/conftest.py``).

Change the nodes in one place: :data:`tests.cluster.harness.DEFAULT_WORKERS`, or per module with
``@pytest.mark.parametrize("ray_cluster", [{"name": {"resource": 1}, ...}], indirect=True)`` (one
cluster per distinct value, for the session).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from demo.raycluster import LocalRayCluster
from tests.cluster.harness import DEFAULT_WORKERS, require_ray_cli, worker_specs


@pytest.fixture(scope="module")
def ray_cluster(request: pytest.FixtureRequest) -> Iterator[LocalRayCluster]:
    """A head (2 logical CPUs, no custom resources) and the worker nodes of
    :data:`~tests.cluster.harness.DEFAULT_WORKERS` (or of ``request.param``), token auth on.

    Tests that kill or restart a node must leave it running again."""
    require_ray_cli()
    workers = getattr(request, "param", DEFAULT_WORKERS)
    cluster = LocalRayCluster(worker_specs(workers), auth_token=secrets.token_hex(32))
    with cluster:
        yield cluster
