"""The whole pipeline on a real multi-node Ray cluster (``ray start`` x 4 on this machine).

Head (the driver's ``pacsai up`` and the auditor), two ingress nodes (cells ``a`` and ``b``, each
its own spool and stage actors) and a model node (the replicas, by the ``model`` resource), Ray
token authentication on; the shared PostgreSQL ledger and Orthanc as the PACS. End to end, then
the failures a cluster has, each with exact counts: every acknowledged instance ends in exactly
one terminal state and the PACS holds exactly one SR per study.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread

from core.config import parse_config
from core.types import JobState
from demo.orthanc import OrthancProcess, orthanc_binary
from demo.raycluster import LocalRayCluster, NodeSpec, ray_cli
from state.data_keys import rotated, write_key_file
from state.ledger import Ledger, open_ledger
from synthetic.synthetic_dicom import make_cxr_study, save_study

ROOT = Path(__file__).resolve().parents[2]
PG_ENV = "PACSAI_CLUSTER_PG_DSN"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
TERMINAL = {JobState.DELIVERED.value, JobState.SKIPPED.value, JobState.QUARANTINED.value, JobState.DEAD.value}

pytestmark = pytest.mark.skipif(
    ray_cli() is None or orthanc_binary() is None or shutil.which("storescu") is None,
    reason="ray, Orthanc and dcmtk are installed by `make test`",
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    nodes = [
        NodeSpec("ingress-a", {"ingress": 1, "pacsai_cell_a": 1}),
        NodeSpec("ingress-b", {"ingress": 1, "pacsai_cell_b": 1}),
        NodeSpec("model-m", {"model": 1}),
    ]
    with LocalRayCluster(nodes, auth_token="pacsai-cluster-test-token", gcs_fault_tolerance=True) as c:
        yield c


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    orthanc = OrthancProcess(tmp_path_factory.mktemp("orthanc")).start()
    yield orthanc
    orthanc.discard()


@pytest.fixture(scope="module")
def raw_config(
    cluster: LocalRayCluster, pacs: OrthancProcess, postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The test config on the cluster: cells a and b, one chest model on the model node."""
    raw = yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())
    chest = raw["models"]["chest_xray"]
    chest["weights"] = str(ROOT / chest["weights"])
    chest["serve"].update(
        resources={"model": 0.01},
        num_cpus=0.25,
        min_replicas=1,
        max_replicas=2,
        target_ongoing_requests=0.5,
        upscale_delay_s=1,
        downscale_delay_s=5,
        look_back_period_s=3,  # Serve's 30 s average would hold the load long after it stops
    )
    keys = tmp_path_factory.mktemp("keys") / "data-keys.json"
    write_key_file(keys, rotated(None))  # every node seals the shared ledger's columns with one key
    raw.update(
        site_name="cl",
        storage={
            "var_dir": str(tmp_path_factory.mktemp("var")),
            "ledger": {"backend": "postgresql", "dsn_env": PG_ENV, "schema_prefix": f"cl{int(time.time()) % 10**6}"},
            "encryption": {"key_file": str(keys)},
            # each cell's first listener purges its own rejected/ on its node (planted files below)
            "retention": {"rejected_days": 30, "period_s": 1.0},
        },
        # the config, not the driver's environment, turns on Ray's token authentication
        ray={"address": cluster.address, "namespace": "pacsai-cluster", "auth_token_file": str(cluster.token_file)},
        cluster={"cells": ["a", "b"], "stage_actors": 2, "start_timeout_s": 240},
        models={"chest_xray": chest},
        routing={"rules": [r for r in raw["routing"]["rules"] if r["family"] == "chest_xray"]},
        stages={"lease_s": 8.0},
    )
    raw["assembly"]["quiet_period_s"] = 3.0  # a study split over two storescu runs on a busy 2-core machine
    raw["pacs"].update(port=pacs.dicom_port, ae_title=pacs.aet)
    parse_config(raw)  # valid before any process starts
    return raw


class Up:
    """``pacsai up`` in a driver process on the cluster (the test process holds no Ray)."""

    def __init__(self, cluster: LocalRayCluster, raw: dict[str, Any], dsn: str) -> None:
        self.driver = cluster.driver(token=None)  # no token in its environment: the config has it
        self.driver.exec(
            f"import os, sys\nos.chdir({str(ROOT)!r})\nsys.path.insert(0, {str(ROOT)!r})\n"
            f"os.environ[{PG_ENV!r}] = {dsn!r}\n"
            "from actors.pipeline import Pipeline\nfrom core.config import parse_config\n"
            f"pipeline = Pipeline(parse_config({raw!r})).start()",
            timeout=420,
        )

    def port(self, cell: str) -> int:
        return int(self.driver.eval(f"pipeline.listener_port(timeout_s=180, cell={cell!r})", timeout=240))

    def nodes_of_actors(self) -> dict[str, str]:
        """Actor name -> NodeID of every live actor of the pipeline."""
        return self.driver.eval(
            "{a['Name']: a['Address']['NodeID'] for a in __import__('ray')._private.state.actors().values()"
            " if a['State'] == 'ALIVE' and a['Name'].startswith('cl-')}"
        )

    def replicas(self) -> int:
        """Running replicas of the chest model's deployment."""
        return int(
            self.driver.eval(
                "sum(s.get('RUNNING', 0) for s in [d.replica_states for d in __import__('ray').serve.status()"
                ".applications['model-chest_xray'].deployments.values()])"
            )
        )

    def close(self) -> None:
        self.driver.close()


@pytest.fixture(scope="module")
def up(cluster: LocalRayCluster, raw_config: dict[str, Any], postgres_dsn: str) -> Iterator[Up]:
    running = Up(cluster, raw_config, postgres_dsn)
    yield running
    running.close()


@pytest.fixture(scope="module")
def ledger(raw_config: dict[str, Any], postgres_dsn: str, up: Up) -> Iterator[Ledger]:
    import os

    os.environ[PG_ENV] = postgres_dsn
    led = open_ledger(parse_config(raw_config).storage)
    yield led
    led.close()


def _studies(tmp: Path, first_seed: int, n: int, images: int = 2) -> list[tuple[str, list[Path]]]:
    out = []
    for seed in range(first_seed, first_seed + n):
        datasets = make_cxr_study(seed, n_images=images, patient_id=f"CL{seed:04d}", accession=f"CL{seed}")
        out.append((str(datasets[0].StudyInstanceUID), save_study(datasets, tmp / f"s{seed}")))
    return out


def _send(files: list[Path], port: int) -> None:
    from demo.dcmtk import storescu

    res = storescu(files, "127.0.0.1", port, "PACSAI")
    assert res.returncode == 0, res.stderr[-800:]


def _latest_states(ledger: Ledger, study_uids: list[str]) -> dict[str, str]:
    return {u: (jobs[-1].state.value if (jobs := ledger.jobs.for_study(u)) else "none") for u in study_uids}


def _wait_terminal(ledger: Ledger, study_uids: list[str], timeout_s: float = 240.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = _latest_states(ledger, study_uids)
        if all(s in TERMINAL for s in states.values()):
            return states
        time.sleep(0.5)
    raise AssertionError(f"not terminal after {timeout_s} s: {_latest_states(ledger, study_uids)}")


def _assert_exactly_once(ledger: Ledger, pacs: OrthancProcess, studies: list[tuple[str, list[Path]]]) -> None:
    uids = [u for u, _ in studies]
    assert set(_wait_terminal(ledger, uids).values()) == {JobState.DELIVERED.value}
    for uid, files in studies:
        states = ledger.intake.states(uid)
        assert len(states) == len(files), (uid, states)  # every acknowledged instance is held once
        assert {s.value for s in states.values()} == {"reported"}, (uid, states)
        kinds = [e.type for e in ledger.audit.events(uid)]
        # a study never runs twice, even with two actors of every stage leasing in each cell
        assert (kinds.count("inferred"), kinds.count("sr_built"), kinds.count("sr_delivered")) == (1, 1, 1), kinds
        srs = [m["ID"] for m in pacs.instances_of_study(uid, modality="SR")]
        assert len(srs) == 1, (uid, srs)  # the PACS holds exactly one SR of the study
        assert str(dcmread(BytesIO(pacs.file(srs[0]))).SOPClassUID) == SR_CLASS


def test_each_cell_runs_on_its_ingress_node_and_every_study_gives_one_sr(
    cluster: LocalRayCluster, up: Up, ledger: Ledger, pacs: OrthancProcess, tmp_path: Path, raw_config: dict[str, Any]
) -> None:
    stale = time.time() - 40 * 86400  # older than rejected_days: each cell's retention takes its own
    planted = []
    for cell in ("a", "b"):
        rejected = Path(raw_config["storage"]["var_dir"]) / "cells" / cell / "rejected"
        rejected.mkdir(parents=True, exist_ok=True)
        planted.append(rejected / f"stale-{cell}.dcm")
        planted[-1].write_bytes(b"rejected long ago")
        os.utime(planted[-1], (stale, stale))
    ids = cluster.node_ids()
    placed = up.nodes_of_actors()
    for name, node in placed.items():
        if name.startswith("cl-a-"):
            assert node == ids["ingress-a"], (name, node)
        elif name.startswith("cl-b-"):
            assert node == ids["ingress-b"], (name, node)
    assert {"cl-a-listener", "cl-a-validator", "cl-a-validator-1", "cl-b-listener", "cl-b-delivery-1"} <= set(placed)
    names = up.driver.eval("[(k, h.actor) for k, h in pipeline.health().items()]")
    assert all(key == actor for key, actor in names), names  # health rows name actors as the pipeline does

    studies = _studies(tmp_path, 100, 5)
    port_a, port_b = up.port("a"), up.port("b")
    for _, files in studies[:2]:
        _send(files, port_a)
    for _, files in studies[2:4]:
        _send(files, port_b)
    split_uid, split_files = studies[4]  # one study whose associations land on both nodes
    _send(split_files[:1], port_a)
    _send(split_files[1:], port_b)
    _assert_exactly_once(ledger, pacs, studies)
    jobs = ledger.jobs.for_study(split_uid)
    assert len(jobs) == 1, [j.state for j in jobs]  # one job, not one per node
    loops = up.driver.eval("{k: [loop.name for loop in h.loops] for k, h in pipeline.health().items()}")
    assert "retention" in loops["a/listener"] and "retention" in loops["b/listener"], loops
    assert "retention" not in loops["auditor"], loops  # it saw no cell's instances on a cluster
    deadline = time.monotonic() + 60
    while any(f.exists() for f in planted) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(f.exists() for f in planted), planted
    assert "data_purged" in [e.type for e in ledger.audit.events()]


def test_a_dead_ingress_node_loses_and_doubles_nothing_and_the_other_goes_on(
    cluster: LocalRayCluster, up: Up, ledger: Ledger, pacs: OrthancProcess, tmp_path: Path
) -> None:
    studies = _studies(tmp_path, 200, 6)
    port_a, port_b = up.port("a"), up.port("b")
    on_b = studies[:3]
    on_a = studies[3:]
    for _, files in on_b:
        _send(files, port_b)
    cluster.kill_node("ingress-b")  # acknowledged, in flight: its spool and its actors go down
    t0 = time.monotonic()
    for _, files in on_a:
        _send(files, port_a)
    assert set(_wait_terminal(ledger, [u for u, _ in on_a]).values()) == {"delivered"}
    assert all(s not in TERMINAL for s in _latest_states(ledger, [u for u, _ in on_b]).values())
    cluster.restart_node("ingress-b")  # the machine comes back with its disk; Ray restarts cell b
    _assert_exactly_once(ledger, pacs, studies)
    print(f"cell b recovered {time.monotonic() - t0:.1f} s after the kill")


def test_model_node_gone_jobs_wait_without_spending_retries_then_finish(
    cluster: LocalRayCluster, up: Up, ledger: Ledger, pacs: OrthancProcess, tmp_path: Path
) -> None:
    cluster.kill_node("model-m")
    studies = _studies(tmp_path, 300, 3)
    port_a = up.port("a")
    for _, files in studies:
        _send(files, port_a)
    uids = [u for u, _ in studies]

    def waiting() -> bool:
        return all(s == JobState.LINKED.value for s in _latest_states(ledger, uids).values())

    cluster.wait_for(waiting, timeout=180, what="studies waiting for the model")
    time.sleep(5)  # a few retry rounds with no replica anywhere
    assert all(j.attempts == 0 for u in uids for j in ledger.jobs.for_study(u))
    cluster.restart_node("model-m")
    _assert_exactly_once(ledger, pacs, studies)
    assert all(j.attempts == 0 for u in uids for j in ledger.jobs.for_study(u))


def test_model_replicas_scale_with_ongoing_requests_within_their_bounds(
    cluster: LocalRayCluster, up: Up, ledger: Ledger, pacs: OrthancProcess, tmp_path: Path
) -> None:
    cluster.wait_for(lambda: up.replicas() == 1, timeout=120, what="idle: min_replicas")
    port_a, port_b = up.port("a"), up.port("b")
    studies: list[tuple[str, list[Path]]] = []
    seen: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and max(seen, default=0) < 2:  # steady load until it scales
        batch = _studies(tmp_path, 500 + len(studies), 2, images=3)
        for i, (_, files) in enumerate(batch):
            _send(files, port_a if i % 2 else port_b)
        studies += batch
        seen.append(up.replicas())
    _assert_exactly_once(ledger, pacs, studies)
    assert max(seen) == 2, seen  # scaled up under load, never past max_replicas
    cluster.wait_for(lambda: up.replicas() == 1, timeout=120, what="scale back down to min_replicas")


def test_head_restart_then_up_again_resumes_from_the_ledger(
    cluster: LocalRayCluster,
    up: Up,
    ledger: Ledger,
    pacs: OrthancProcess,
    raw_config: dict[str, Any],
    postgres_dsn: str,
    tmp_path: Path,
) -> None:
    studies = _studies(tmp_path, 400, 3)
    port_a = up.port("a")
    for _, files in studies:
        _send(files, port_a)
    up.close()  # `pacsai up` dies with the head: its actors go with it
    cluster.restart_head()
    again = Up(cluster, raw_config, postgres_dsn)
    try:
        _assert_exactly_once(ledger, pacs, studies)
    finally:
        again.close()
