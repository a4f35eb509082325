"""Shared test settings: strict pydicom reading and writing (highdicom's conftest does the same)."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA with a server and a client certificate for every TLS test (made once)."""
    return make_pki(Path(tmp_path_factory.mktemp("pki")))
