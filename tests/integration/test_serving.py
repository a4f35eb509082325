"""Ray Serve as operated: a replica dies mid-batch, a family is removed and deployed again."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.uid import Comprehensive3DSRStorage

from actors.pipeline import wait_until
from core.config import app_name
from synthetic.synthetic_dicom import save_study
from synthetic.synthetic_studies import brain_mr_study, fracture_study, head_ct_study
from tests.integration.conftest import (
    ledger_of,
    needs_peers,
    pacs_outputs,
    send_files,
    wait_for_states,
)

pytestmark = [pytest.mark.integration, needs_peers]
ROOT = Path(__file__).resolve().parents[2]


def _replicas(family: str) -> list[str]:
    import ray

    prefix = f"SERVE_REPLICA::{app_name(family)}#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))


def _pacsai(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    import ray

    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    return subprocess.run(
        [sys.executable, "-m", "actors.cli", *args, "--config", "configs/test.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_replica_killed_mid_batch_its_requests_are_retried_and_each_study_reported_once(
    tmp_path, orthanc, make_pipeline, model_app
):
    import ray

    # A quiet period well above any stall of the loaded machine: this test is about the replica,
    # and a study completed early would come back as two versions (right, but not this test).
    pipeline, cfg = make_pipeline(orthanc, assembly={"quiet_period_s": 3.0})
    ledger = ledger_of(pipeline)
    uids: list[str] = []
    hit, kills = False, 0
    # The lease is taken before the request reaches the replica (the inference actor first reads
    # the study's files), and a study takes the replica a few tenths of a second; so wait a
    # little after the lease (a different little each time) and, while jobs are still at the
    # inference stage, kill the replacement replica too, which takes the queued requests as soon
    # as it is up.
    delays = (0.1, 0.25, 0.05, 0.4, 0.18)

    def landed(batch: list[str]) -> bool:
        retries = [e.detail for uid in batch for e in ledger.audit.events(uid) if e.type == "job_retry"]
        return any("model:head_ct_haemorrhage unavailable" in r["error"] and r["unavailable"] for r in retries)

    for round_ in range(3):
        studies = [
            head_ct_study(500 + 10 * round_ + i, {60: ["intraventricular"]} if i % 2 else None, n_slices=120, size=128)
            for i in range(4)
        ]
        # one association: the studies complete close together and their requests overlap
        send_files(
            [p for n, study in enumerate(studies) for p in save_study(study.datasets, tmp_path / f"in{round_}-{n}")],
            pipeline,
            cfg,
        )
        batch = [s.study_uid for s in studies]
        uids += batch

        def in_flight(batch: list[str] = batch) -> bool:  # the inference stage holds a job: its request is on its way
            return any(
                j.state.value == "linked" and "inference" in j.lease_owner.split("|")[1:2]  # run|actor|process
                for uid in batch
                for j in ledger.jobs.for_study(uid)
            )

        def past_inference(batch: list[str] = batch) -> bool:
            states = [j.state.value for uid in batch for j in ledger.jobs.for_study(uid)]
            return len(states) == len(batch) and all(s in ("inferred", "written", "delivered") for s in states)

        deadline = time.monotonic() + 240
        while not hit and not past_inference() and time.monotonic() < deadline:
            if not wait_until(in_flight, 2, 0.01):
                continue
            time.sleep(delays[kills % len(delays)])
            replicas = _replicas("head_ct_haemorrhage")
            for replica in replicas:
                ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=True)
            kills += 1
            assert wait_until(lambda gone=set(replicas): set(_replicas("head_ct_haemorrhage")) - gone, 120, 0.1)
            hit = wait_until(lambda batch=batch: landed(batch), 1, 0.1)
        assert wait_for_states(ledger, batch, {"delivered"}, timeout_s=420), ledger.status.report(time.time())
        assert _replicas("head_ct_haemorrhage")
        if hit or landed(batch):
            hit = True
            break
    assert hit, f"none of {kills} kills landed on a request in flight"
    for uid in uids:
        assert len(ledger.jobs.for_study(uid)) == 1
        assert len(pacs_outputs(orthanc, uid)[Comprehensive3DSRStorage]) == 1
        assert set(ledger.intake.states(uid).values()) == {"reported"}
    assert ledger.status.report(time.time()).jobs.get("dead", 0) == 0


def test_a_family_is_removed_and_deployed_again_while_the_others_keep_serving(
    tmp_path, orthanc, make_pipeline, model_app
):
    pipeline, cfg = make_pipeline(orthanc)
    others = _replicas("bone_fracture")
    removed = _pacsai("models", "remove", "brain_mri_tumour")
    assert removed.returncode == 0 and "removed model-brain_mri_tumour" in removed.stdout, removed.stderr[-2000:]
    try:
        brain, limb = brain_mr_study(520, True), fracture_study(521, True)
        send_files(save_study(brain.datasets, tmp_path / "brain"), pipeline, cfg)
        send_files(save_study(limb.datasets, tmp_path / "limb"), pipeline, cfg)
        ledger = ledger_of(pipeline)
        assert wait_for_states(ledger, [limb.study_uid], {"delivered"}, timeout_s=180)
        assert wait_for_states(ledger, [brain.study_uid], {"linked"}, timeout_s=60)
        time.sleep(1.5)  # several rounds against the missing deployment
        [job] = ledger.jobs.for_study(brain.study_uid)
        assert job.state.value == "linked" and job.attempts == 0
        assert "model:brain_mri_tumour unavailable" in job.reason
        listing = _pacsai("models", "list", timeout=120)
        assert "model-brain_mri_tumour" not in listing.stdout and "model-bone_fracture" in listing.stdout
    finally:
        deployed = _pacsai("models", "deploy", "brain_mri_tumour")
        assert deployed.returncode == 0, deployed.stderr[-2000:]
    assert wait_for_states(ledger, [brain.study_uid], {"delivered"}, timeout_s=180)
    assert len(pacs_outputs(orthanc, brain.study_uid)[Comprehensive3DSRStorage]) == 1
    assert _replicas("bone_fracture") == others  # the other families were never restarted
