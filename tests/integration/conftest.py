"""Real peers for integration tests: one local Ray for the session, every model family of
configs/test.yaml deployed once, a private Orthanc per test, and a pipeline per test on its own
var dir."""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from actors.pipeline import Pipeline, deploy_models, start_serve, wait_until
from core.config import AppConfig, parse_config
from demo.orthanc import OrthancProcess, free_port, orthanc_binary
from state.ledger import Ledger, open_ledger

ROOT = Path(__file__).resolve().parents[2]
TEST_CONFIG = ROOT / "configs" / "test.yaml"

needs_peers = pytest.mark.skipif(
    orthanc_binary() is None or shutil.which("storescu") is None or shutil.which("dciodvfy") is None,
    reason="Orthanc, dcmtk and dicom3tools are installed by `make test`",
)


def base_config() -> dict[str, Any]:
    """The raw test config (a fresh copy each time)."""
    raw = yaml.safe_load(TEST_CONFIG.read_text())
    for entry in raw["models"].values():
        entry["weights"] = str(ROOT / entry["weights"])
    return copy.deepcopy(raw)


@pytest.fixture(scope="session")
def demo_weights() -> dict[str, Path]:
    """Demo weights of every family, trained once if `make weights` did not already."""
    cfg = parse_config(base_config())
    paths = {}
    for family, entry in cfg.models.items():
        path = Path(entry.weights)
        if not (path.exists() and Path(f"{path}.sha256").exists()):
            from training.training import train_demo

            train_demo(family, entry, path, steps=0)
        paths[family] = path
    return paths


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole session."""
    import ray

    # Workers report metrics every second (not Ray's 10 s), so the metrics tests see them move.
    ray.init(
        num_cpus=2,
        namespace="pacsai-test",
        include_dashboard=False,
        logging_level="WARNING",
        _system_config={"metrics_report_interval_ms": 1000},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def api_section(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The ``api`` config section every API test uses: Serve's HTTPS proxy is started once per
    Ray (its port and certificate are fixed then), on a free port with a throwaway CA."""
    from tests.pki import make_pki

    pki = make_pki(Path(tmp_path_factory.mktemp("api-pki")))
    return {
        "host": "127.0.0.1",
        "port": free_port(),
        "tls": {"certificate": str(pki.server_cert), "private_key": str(pki.server_key)},
        "ca_for_clients": str(pki.ca),
    }


def api_config(section: dict[str, Any]) -> dict[str, Any]:
    """The ``api`` section without the test-only CA path."""
    return {k: v for k, v in section.items() if k != "ca_for_clients"}


@pytest.fixture(scope="session")
def model_app(ray_session: None, demo_weights: dict[str, Path], api_section: dict[str, Any]) -> AppConfig:
    """Every family's deployment (a fraction of a CPU each), shared by every test; Serve's
    HTTPS proxy is started first, for the tests that deploy the API."""
    raw = base_config()
    start_serve(parse_config({**raw, "api": api_config(api_section)}))
    cfg = parse_config(raw)
    deploy_models(cfg)
    return cfg


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancProcess]:
    """A private Orthanc as the PACS."""
    pacs = OrthancProcess(tmp_path / "orthanc").start()
    yield pacs
    pacs.discard()


@pytest.fixture
def make_pipeline(
    tmp_path: Path, model_app: AppConfig, storage_for: Callable[..., Any]
) -> Iterator[Callable[..., tuple[Pipeline, AppConfig]]]:
    """Start a pipeline on this test's var dir; ``overrides`` patch the raw config;
    ``backend="postgresql"`` puts its ledger on the session's PostgreSQL server."""
    started: list[Pipeline] = []

    def start(
        pacs: OrthancProcess | None = None, backend: str = "sqlite", **overrides: Any
    ) -> tuple[Pipeline, AppConfig]:
        raw = base_config()
        raw["site_name"] = f"t{len(started)}-{int(time.time() * 1000) % 10**8}"
        raw["storage"] = storage_for(backend, tmp_path / "var").model_dump()
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


def ledger_of(pipeline: Pipeline) -> Ledger:
    """A ledger connection for assertions."""
    return open_ledger(pipeline.cfg.storage, pipeline.layout)


def wait_for_states(ledger: Ledger, study_uids: list[str], states: set[str], timeout_s: float = 90.0) -> bool:
    """Wait until the latest job of every study is in one of ``states``."""

    def done() -> bool:
        for uid in study_uids:
            jobs = ledger.jobs.for_study(uid)
            if not jobs or jobs[-1].state.value not in states:
                return False
        return True

    return wait_until(done, timeout_s, 0.2)


STORESCU_PROPOSE = {
    "1.2.840.10008.1.2": ("-xi",),
    "1.2.840.10008.1.2.1": ("-xe",),
    "1.2.840.10008.1.2.2": ("-xb",),
    "1.2.840.10008.1.2.1.99": ("-xd",),
    "1.2.840.10008.1.2.5": ("-xr",),
    "1.2.840.10008.1.2.4.80": ("-xt",),
    "1.2.840.10008.1.2.4.90": ("-xv",),
}
"""storescu options that propose a file's own transfer syntax (one presentation context per
syntax), so that the file travels as stored instead of being converted by storescu."""


def send_files(files: list[Path], pipeline: Pipeline, cfg: AppConfig, *, own_syntax: str | bool = False) -> None:
    """storescu the files to the pipeline's listener. ``own_syntax``: propose only the contexts
    the files need (True), or that and this transfer syntax UID, in which the files are."""
    from demo.dcmtk import storescu

    extra = STORESCU_PROPOSE[own_syntax] if isinstance(own_syntax, str) else ()
    res = storescu(
        files,
        "127.0.0.1",
        pipeline.listener_port(),
        cfg.listener.ae_title,
        propose_own_syntax=bool(own_syntax),
        extra=extra,
    )
    assert res.returncode == 0, res.stderr[-800:]


def pacs_outputs(pacs: OrthancProcess, study_uid: str) -> dict[str, list[Any]]:
    """Every object Orthanc holds for a study, parsed, by SOP Class UID (only our results are
    ever stored there in these tests)."""
    from io import BytesIO

    from pydicom import dcmread

    out: dict[str, list[Any]] = {}
    for meta in pacs.instances_of_study(study_uid):
        ds = dcmread(BytesIO(pacs.file(meta["ID"])))
        out.setdefault(str(ds.SOPClassUID), []).append(ds)
    return out
