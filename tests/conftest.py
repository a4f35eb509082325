"""Shared test settings: strict pydicom reading and writing (highdicom's conftest does the same)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from pydicom import config as dicom_config

from tests.pki import Pki, make_pki


@pytest.fixture(autouse=True)
def strict_pydicom():
    """Make pydicom raise on invalid values while a test runs, then restore the settings."""
    reading, writing = dicom_config.settings.reading_validation_mode, dicom_config.settings.writing_validation_mode
    dicom_config.settings.reading_validation_mode = dicom_config.RAISE
    dicom_config.settings.writing_validation_mode = dicom_config.RAISE
    yield
    dicom_config.settings.reading_validation_mode = reading
    dicom_config.settings.writing_validation_mode = writing


# ---------------------------------------------------------------- PostgreSQL (issue 9)
@pytest.fixture(scope="session")
def postgres_dsn():
    """A private PostgreSQL server for the session (Debian's ``postgresql``, started with
    ``initdb``/``pg_ctl`` in a temp dir on a free port); its DSN."""
    from demo.postgres import PostgresServer, postgres_bindir

    if postgres_bindir() is None:
        pytest.skip("PostgreSQL is installed by `make test` (Debian package postgresql)")
    server = PostgresServer().start()
    yield server.dsn
    server.stop()


_PG_ENV = "PACSAI_TEST_PG_DSN"
_SCHEMAS = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request):
    """Each ledger backend in turn: the contract suite runs against both."""
    return request.param


@pytest.fixture
def storage_for(request, tmp_path, monkeypatch):
    """``storage_for(backend)``: a StorageConfig on this test's var dir and, for PostgreSQL,
    schemas of its own on the session's server."""
    from core.config import LedgerConfig, StorageConfig

    def make(backend: str, var_dir=None, **ledger):
        if backend == "postgresql":
            monkeypatch.setenv(_PG_ENV, request.getfixturevalue("postgres_dsn"))
            prefix = f"t{os.getpid()}_{next(_SCHEMAS)}"
            ledger = {"backend": "postgresql", "dsn_env": _PG_ENV, "schema_prefix": prefix, **ledger}
        return StorageConfig(var_dir=str(var_dir or tmp_path / "var"), ledger=LedgerConfig(**ledger))

    return make


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA with a server and a client certificate for every TLS test (made once)."""
    return make_pki(Path(tmp_path_factory.mktemp("pki")))


# ---------------------------------------------------------------- two workers (make test)
LOCAL_RAY_FILES = frozenset(
    {
        # a test of theirs runs on the session's local Ray (``ray_session`` among its fixtures)
        "test_api_serve.py",
        "test_completeness.py",
        "test_compliance_e2e.py",
        "test_dicomweb_delivery.py",
        "test_end_to_end.py",
        "test_hl7_pipeline.py",
        "test_metrics.py",
        "test_model_families.py",
        "test_model_versions.py",
        "test_mpps_completion.py",
        "test_pacs_routing.py",
        "test_postgres_restart.py",
        "test_priors.py",
        "test_results_to_pacs.py",
        "test_review_page.py",
        "test_serving.py",
        "test_shared_port.py",
        # no session Ray, but a Ray of their own or a tightly bounded wait
        "test_alert_pushes.py",  # bounds a push's latency
        "test_bench.py",  # runs a benchmark's own pipeline
        "test_cli.py",  # `pacsai up` starts a Ray
        "test_hl7_listener.py",  # bounds a slow peer's cut-off
        "test_hostile_input.py",  # bounds the drips' cut-off
        "test_listener_fuzz.py",
    }
)
"""Integration files run one after the other on one worker, never beside each other."""


def work_unit(nodeid: str) -> str:
    """The work unit of a test under ``make test``'s two workers: ``cluster`` (the multi-node
    tests: their own ``ray start`` nodes, ports and temp dirs, so they run beside the local Ray),
    ``local-ray`` (:data:`LOCAL_RAY_FILES`: a second local Ray would deploy every model twice on
    two cores), or its own file (starts no Ray: any worker, a file at a time, so module fixtures
    start once)."""
    path = nodeid.split("::", 1)[0]
    if path.startswith("tests/cluster/"):
        return "cluster"
    return "local-ray" if Path(path).name in LOCAL_RAY_FILES else path


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadgroup`` schedules by :func:`work_unit`. (xdist's own loadgroup reads
    ``xdist_group`` marks by rewriting ``item._nodeid``, which pytest 9.2 no longer reads: its
    groups silently became single tests.)"""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class PeerGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return PeerGroups(config, log)


_STRAY = pytest.StashKey[set[str]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under those groups, a test on the session's Ray in a file missing from
    :data:`LOCAL_RAY_FILES` would start a second local Ray beside the first: such tests fail
    before their fixtures start, saying what to add."""
    if not getattr(config.option, "loadgroup", False):  # set on xdist workers for --dist loadgroup
        return
    config.stash[_STRAY] = {
        item.nodeid
        for item in items
        if "ray_session" in getattr(item, "fixturenames", ()) and work_unit(item.nodeid) != "local-ray"
    }


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.nodeid in item.config.stash.get(_STRAY, set()):
        pytest.fail(
            f"{Path(str(item.fspath)).name} runs on the session's Ray: add it to LOCAL_RAY_FILES (tests/conftest.py)"
        )
