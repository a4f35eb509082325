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
