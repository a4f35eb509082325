"""Real peers for integration tests: one local Ray for the session, the chest X-ray model
deployed once, a private Orthanc per test, and a pipeline per test on its own var dir."""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from actors.adapters.ledger import SqliteLedger
from actors.adapters.orthanc import OrthancProcess, free_port, orthanc_binary
from actors.pipeline import Pipeline, deploy_models, wait_until
from core.config import AppConfig, parse_config

ROOT = Path(__file__).resolve().parents[2]
TEST_CONFIG = ROOT / "configs" / "test.yaml"

needs_peers = pytest.mark.skipif(
    orthanc_binary() is None or shutil.which("storescu") is None or shutil.which("dciodvfy") is None,
    reason="Orthanc, dcmtk and dicom3tools are installed by `make test`",
)


def base_config() -> dict[str, Any]:
    """The raw test config (a fresh copy each time)."""
    raw = yaml.safe_load(TEST_CONFIG.read_text())
    entry = raw["models"]["chest_xray"]
    entry["weights"] = str(ROOT / entry["weights"])
    return copy.deepcopy(raw)


@pytest.fixture(scope="session")
def cxr_weights() -> Path:
    """Demo weights, trained once if `make weights` did not already."""
    cfg = parse_config(base_config())
    entry = cfg.models["chest_xray"]
    path = Path(entry.weights)
    if not (path.exists() and Path(f"{path}.sha256").exists()):
        from models.training import train_demo

        train_demo("chest_xray", entry, path, steps=0)
    return path


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole session."""
    import ray

    ray.init(num_cpus=2, namespace="pacsai-test", include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def model_app(ray_session: None, cxr_weights: Path) -> AppConfig:
    """The chest X-ray deployment, shared by every test."""
    cfg = parse_config(base_config())
    deploy_models(cfg)
    return cfg


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancProcess]:
    """A private Orthanc as the PACS."""
    pacs = OrthancProcess(tmp_path / "orthanc").start()
    yield pacs
    pacs.stop()


@pytest.fixture
def make_pipeline(tmp_path: Path, model_app: AppConfig) -> Iterator[Callable[..., tuple[Pipeline, AppConfig]]]:
    """Start a pipeline on this test's var dir; ``overrides`` patch the raw config."""
    started: list[Pipeline] = []

    def start(pacs: OrthancProcess | None = None, **overrides: Any) -> tuple[Pipeline, AppConfig]:
        raw = base_config()
        raw["site_name"] = f"t{len(started)}-{int(time.time() * 1000) % 10**8}"
        raw["storage"]["var_dir"] = str(tmp_path / "var")
        raw["listener"]["port"] = free_port()
        if pacs is not None:
            raw["pacs"].update(port=pacs.dicom_port, ae_title=pacs.aet)
        for section, values in overrides.items():
            if isinstance(values, dict) and isinstance(raw.get(section), dict):
                raw[section].update(values)
            else:  # a scalar, or a section the base config does not have (hl7, ehr)
                raw[section] = values
        cfg = parse_config(raw)
        pipeline = Pipeline(cfg).start(deploy=False)
        started.append(pipeline)
        return pipeline, cfg

    yield start
    for p in started:
        p.stop()


def ledger_of(pipeline: Pipeline) -> SqliteLedger:
    """A ledger connection for assertions."""
    return SqliteLedger(pipeline.layout.ledger)


def wait_for_states(ledger: SqliteLedger, study_uids: list[str], states: set[str], timeout_s: float = 90.0) -> bool:
    """Wait until the latest job of every study is in one of ``states``."""

    def done() -> bool:
        for uid in study_uids:
            jobs = ledger.jobs_for_study(uid)
            if not jobs or jobs[-1].state.value not in states:
                return False
        return True

    return wait_until(done, timeout_s, 0.2)
