"""Issue #2 end to end: storescu -> listener -> ... -> Ray Serve -> SR -> a real Orthanc."""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.sr.codedict import codes
from ray import serve

from actors.pipeline import deploy_models, wait_until
from core.config import app_name
from core.leases import LeaseOwner
from core.results import DeliveryState
from core.sr import differing_attributes
from demo.dcmtk import dciodvfy, storescu
from synthetic.synthetic_dicom import make_cxr_study, save_study
from tests.integration.conftest import ledger_of, needs_peers, wait_for_states

pytestmark = [pytest.mark.integration, needs_peers]


def send(files, pipeline, cfg):
    res = storescu(files, "127.0.0.1", pipeline.listener_port(), cfg.listener.ae_title)
    assert res.returncode == 0, res.stderr[-500:]


def study(tmp_path: Path, seed: int, findings=frozenset(), n=1, modality="DX", **kw):
    datasets = make_cxr_study(
        seed=seed,
        findings=frozenset(findings),
        n_images=n,
        modality=modality,
        patient_id=f"P{seed}",
        accession=f"A{seed}",
        **kw,
    )
    return datasets, save_study(datasets, tmp_path / f"in{seed}")


def sr_instances(orthanc, study_uid):
    return orthanc.instances_of_study(study_uid, modality="SR")


@contextmanager
def pacs_frozen(orthanc):
    """SIGSTOP the PACS: the kernel still accepts connections, nobody answers, so a delivery
    hangs, holding its job's lease, for the PACS timeout (5 s in the test config) each time."""
    pid = orthanc._proc.pid  # demo.orthanc keeps the process; no other handle on it
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def wait_leased(ledger, study_uid, state, timeout_s=60.0):
    """The study's job once a stage holds it leased in ``state``."""

    def leased():
        jobs = ledger.jobs.for_study(study_uid)
        return jobs and jobs[-1].state.value == state and jobs[-1].lease_owner and jobs[-1]

    assert wait_until(leased, timeout_s, 0.05), ledger.jobs.for_study(study_uid)
    return leased()


def test_study_comes_back_as_a_valid_sr_in_the_pacs(tmp_path, orthanc, make_pipeline, backend):
    """On both ledger backends: the embedded SQLite file and a shared PostgreSQL server."""
    pipeline, cfg = make_pipeline(orthanc, backend=backend)
    assert ledger_of(pipeline).backend == backend
    datasets, files = study(tmp_path, 11, {"nodule"}, n=2)
    study_uid = str(datasets[0].StudyInstanceUID)
    send(files, pipeline, cfg)
    ledger = ledger_of(pipeline)
    assert wait_for_states(ledger, [study_uid], {"delivered"}), ledger.status.report(time.time())

    [sr_meta] = sr_instances(orthanc, study_uid)
    raw = orthanc.file(sr_meta["ID"])
    path = tmp_path / "sr.dcm"
    path.write_bytes(raw)
    errors, _ = dciodvfy(path)
    assert errors == []
    sr = dcmread(BytesIO(raw))
    refs = {
        sop.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for series in s.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert refs == {str(d.SOPInstanceUID) for d in datasets}
    assert differing_attributes(datasets[0], sr) == []
    groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
    assert len(groups) == 19
    probs = {
        g.tracking_identifier.split(":")[1]: g.get_measurements(name=codes.DCM.Probability)[0].value for g in groups
    }
    assert all(0.0 <= p <= 1.0 for p in probs.values())
    texts = {
        i.ConceptNameCodeSequence[0].CodeValue: i.TextValue
        for i in groups[0][0].ContentSequence
        if i.ValueType == "TEXT"
    }
    assert texts["111001"] == cfg.models["chest_xray"].name and texts["111003"] == cfg.models["chest_xray"].version

    path_types = [e.type for e in ledger.audit.events(study_uid)]
    for expected in (
        "instance_received",
        "study_complete",
        "validated",
        "routed",
        "linked",
        "inferred",
        "sr_built",
        "sr_delivered",
    ):
        assert expected in path_types, (expected, path_types)
    assert path_types.count("instance_received") == 2
    assert set(ledger.intake.states(study_uid).values()) == {"reported"}
    assert ledger.audit.verify() is None
    # Every entry the stages appended is signed, and the auditor exports the chain head that
    # ``verify`` then checks against (issue 13).
    import ray

    assert ray.get(pipeline.actors["auditor"].verify.remote(), timeout=60)["intact"] is True
    report = ledger.audit.check()
    assert report.broken is None and report.head_checked and report.signed == report.entries > 0


def test_a_cells_first_listener_purges_its_delivered_studies_past_retention(tmp_path, orthanc, make_pipeline):
    """Retention runs where a cell's files are: in its first listener actor (on a cluster, on
    the cell's node; ``tests/cluster`` checks both cells), no longer in the auditor, which on a
    cluster saw no cell's instances at all. A delivered study past ``spool_after_delivery_days``
    loses its spool files, its instances are marked purged, and the round is audited."""
    import ray

    pipeline, cfg = make_pipeline(orthanc, storage={"retention": {"spool_after_delivery_days": 0, "period_s": 0.5}})

    def loops(key: str) -> set[str]:
        return {loop.name for loop in ray.get(pipeline.actors[key].health.remote(), timeout=60).loops}

    assert "retention" in loops("listener") and "retention" not in loops("auditor")
    datasets, files = study(tmp_path, 12, n=2)
    study_uid = str(datasets[0].StudyInstanceUID)
    send(files, pipeline, cfg)
    ledger = ledger_of(pipeline)
    assert wait_for_states(ledger, [study_uid], {"delivered"}), ledger.status.report(time.time())
    assert len(sr_instances(orthanc, study_uid)) == 1

    def purged() -> list[dict]:
        with ledger.db.read() as tx:
            return tx.all("SELECT path FROM instances WHERE study_uid = ? AND purged_at IS NOT NULL", (study_uid,))

    assert wait_until(lambda: len(purged()) == 2, 60), purged()
    assert not any(Path(row["path"]).exists() for row in purged())
    assert "data_purged" in [e.type for e in ledger.audit.events()]


def test_trained_demo_model_finds_the_phantom_lesion(tmp_path, orthanc, make_pipeline):
    pipeline, cfg = make_pipeline(orthanc)
    pos, pos_files = study(tmp_path, 21, {"effusion"})
    neg, neg_files = study(tmp_path, 22, set())
    send(pos_files + neg_files, pipeline, cfg)
    ledger = ledger_of(pipeline)
    uids = [str(pos[0].StudyInstanceUID), str(neg[0].StudyInstanceUID)]
    assert wait_for_states(ledger, uids, {"delivered"})

    def effusion(uid):
        [m] = sr_instances(orthanc, uid)
        groups = hd.sr.Comprehensive3DSR.from_dataset(
            dcmread(BytesIO(orthanc.file(m["ID"])))
        ).content.get_image_measurement_groups()
        [g] = [g for g in groups if g.tracking_identifier.endswith(":effusion")]
        return g.get_measurements(name=codes.DCM.Probability)[0].value

    assert effusion(uids[0]) > 0.5 > effusion(uids[1])


def test_pacs_outage_keeps_srs_in_the_outbox_until_it_returns(tmp_path, orthanc, make_pipeline):
    pipeline, cfg = make_pipeline(orthanc)
    orthanc.stop()
    datasets, files = study(tmp_path, 41, {"mass"})
    uid = str(datasets[0].StudyInstanceUID)
    send(files, pipeline, cfg)
    ledger = ledger_of(pipeline)
    assert wait_for_states(ledger, [uid], {"written"}, timeout_s=60)
    time.sleep(1.5)
    [job] = ledger.jobs.for_study(uid)
    assert job.state.value == "written" and "pacs unavailable" in job.reason
    pending = ledger.outbox.items(job.job_id, DeliveryState.PENDING)  # the SR, and a heatmap per positive finding
    assert ledger.status.report(time.time()).outbox_pending == len(pending)
    assert [i.item.kind for i in pending].count("sr") == 1
    orthanc.start()
    assert wait_for_states(ledger, [uid], {"delivered"}, timeout_s=60)
    assert len(sr_instances(orthanc, uid)) == 1
    assert ledger.outbox.items(job.job_id, DeliveryState.PENDING) == []


def test_unrouted_studies_and_ai_switches_end_skipped_with_reasons(tmp_path, orthanc, make_pipeline):
    pipeline, cfg = make_pipeline(orthanc)
    ledger = ledger_of(pipeline)
    ledger.controls.set_ai_switch("modality", "CR", False, "scanner QA", "user:rad", time.time())
    cr, cr_files = study(tmp_path, 51, modality="CR")
    other, other_files = study(tmp_path, 52)
    ledger.controls.set_ai_switch(
        "study", str(other[0].StudyInstanceUID), False, "patient request", "user:rad", time.time()
    )
    send(cr_files + other_files, pipeline, cfg)
    uids = [str(cr[0].StudyInstanceUID), str(other[0].StudyInstanceUID)]
    assert wait_for_states(ledger, uids, {"skipped"}, timeout_s=30)
    reasons = [ledger.jobs.for_study(u)[-1].reason for u in uids]
    assert "AI switched off for modality CR" in reasons[0]
    assert "AI switched off for this study" in reasons[1]
    assert set(ledger.intake.states(uids[0]).values()) == {"skipped"}
    assert sr_instances(orthanc, uids[0]) == []
    # Switching back on needs no restart: a new study of the same modality runs.
    ledger.controls.set_ai_switch("modality", "CR", True, "", "user:rad", time.time())
    again, again_files = study(tmp_path, 53, modality="CR")
    send(again_files, pipeline, cfg)
    assert wait_for_states(ledger, [str(again[0].StudyInstanceUID)], {"delivered"})


def test_invalid_instance_is_quarantined_never_processed(tmp_path, orthanc, make_pipeline):
    pipeline, cfg = make_pipeline(orthanc)
    datasets, _ = study(tmp_path, 61)
    ds = datasets[0]
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # truncated pixel data
    files = save_study([ds], tmp_path / "bad")
    send(files, pipeline, cfg)  # accepted: kept and flagged, not refused
    ledger = ledger_of(pipeline)
    uid = str(ds.StudyInstanceUID)
    assert wait_for_states(ledger, [uid], {"quarantined"}, timeout_s=30)
    quarantined = [e for e in ledger.audit.events(uid) if e.type == "quarantined" and e.sop_instance_uid]
    assert quarantined[0].detail["codes"] == ["pixel_length_mismatch"]
    assert set(ledger.intake.states(uid).values()) == {"quarantined"}
    assert sr_instances(orthanc, uid) == []


def test_a_crashed_pipeline_resumes_on_the_next_start_which_takes_its_leases_back(
    tmp_path, orthanc, make_pipeline, model_app
):
    """An AI outage, then a crash. While the model is down, C-STORE keeps succeeding and the
    studies wait durably in ``linked`` without dying, the oldest waiting one saying why. Then
    every actor is killed (SIGKILL, no stop) while one study is being delivered (its lease
    held, for 600 s) and the others wait for their model: the next start is a new run, takes
    the dead run's lease back at once, and every study is reported once."""
    import ray

    pipeline, cfg = make_pipeline(orthanc, stages={"lease_s": 600})
    ledger = ledger_of(pipeline)
    (held, held_files), *waiting = [study(tmp_path, n) for n in (72, 71, 70, 69)]
    uids = [str(held[0].StudyInstanceUID), *(str(d[0].StudyInstanceUID) for d, _ in waiting)]
    with pacs_frozen(orthanc):
        send(held_files, pipeline, cfg)
        job = wait_leased(ledger, uids[0], "written")
        serve.delete(app_name("chest_xray"))
        try:
            for _, files in waiting:
                send(files, pipeline, cfg)  # C-STORE keeps succeeding while the AI is down
            assert wait_for_states(ledger, uids[1:], {"linked"}, timeout_s=30)
            time.sleep(2.0)  # several retry rounds against the missing deployment
            status = ledger.status.report(time.time())
            assert status.jobs["linked"] == 3 and status.jobs["dead"] == 0
            for uid in uids[1:]:
                [waits] = ledger.jobs.for_study(uid)
                assert waits.attempts == 0 and "model:chest_xray unavailable" in waits.reason
            for actor in pipeline.actors.values():
                ray.kill(actor, no_restart=True)  # the crash: nothing gives a lease back
        finally:
            deploy_models(model_app, ["chest_xray"])  # only what the test removed
    assert ledger.jobs.get(job.job_id).lease_owner == job.lease_owner  # still held by the dead run
    restarted = type(pipeline)(cfg).start(deploy=False)
    try:
        assert wait_for_states(ledger, uids, {"delivered"}, timeout_s=90)
    finally:
        restarted.stop()
    for uid in uids:
        assert len(sr_instances(orthanc, uid)) == 1
    [taken] = [e for e in ledger.audit.events(uids[0]) if e.type == "lease_taken_back"]
    assert taken.actor == f"run:{restarted.run_id}" and taken.detail["owner"] == job.lease_owner
    assert LeaseOwner.parse(job.lease_owner).run == pipeline.run_id != restarted.run_id


def test_model_error_spends_the_retry_budget_then_the_job_is_dead_and_replayable(tmp_path, orthanc, make_pipeline):
    pipeline, cfg = make_pipeline(orthanc)
    datasets, _ = study(tmp_path, 81)
    ds = datasets[0]
    # Valid DICOM, but colour: the chest X-ray model refuses it (SamplesPerPixel != 1).
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.PixelData = bytes(ds.Rows * ds.Columns * 3 * 2)
    files = save_study([ds], tmp_path / "rgb")
    send(files, pipeline, cfg)
    ledger = ledger_of(pipeline)
    uid = str(ds.StudyInstanceUID)
    assert wait_for_states(ledger, [uid], {"dead"}, timeout_s=60)
    [job] = ledger.jobs.for_study(uid)
    assert job.attempts == cfg.retry.max_attempts
    assert "SamplesPerPixel" in job.reason
    assert ledger.status.report(time.time()).instances["dead"] == 1
    types = [e.type for e in ledger.audit.events(uid)]
    assert types.count("job_retry") == cfg.retry.max_attempts - 1 and types[-1] == "job_dead"
    assert ledger.jobs.replay(job.job_id, "user:test", time.time()).value == "linked"
    assert wait_for_states(ledger, [uid], {"dead"}, timeout_s=60)  # same input, same verdict
    assert [e.type for e in ledger.audit.events(uid)].count("job_replayed") == 1


def test_killed_actors_are_restarted_and_work_resumes(tmp_path, orthanc, make_pipeline):
    """Ray restarts crashed actors; the delivery stage, killed while its C-STORE hangs (its
    lease held for 600 s), takes that lease back as soon as it is restarted."""
    import ray

    pipeline, cfg = make_pipeline(orthanc, stages={"lease_s": 600})
    port = pipeline.listener_port()
    ledger = ledger_of(pipeline)
    held, held_files = study(tmp_path, 92)
    held_uid = str(held[0].StudyInstanceUID)
    with pacs_frozen(orthanc):
        send(held_files, pipeline, cfg)
        job = wait_leased(ledger, held_uid, "written")
        for name in ("listener", "validator", "sr_writer", "delivery"):
            ray.kill(pipeline.actors[name], no_restart=False)  # a crash: Ray restarts it

    def listener_back() -> bool:
        try:
            return pipeline.listener_port() == port
        except Exception:  # still restarting
            return False

    assert wait_until(listener_back, 120, 0.5)  # a restart is slow on a loaded 2-core box
    datasets, files = study(tmp_path, 91)
    send(files, pipeline, cfg)
    uids = [held_uid, str(datasets[0].StudyInstanceUID)]
    assert wait_for_states(ledger, uids, {"delivered"}, timeout_s=180)
    assert wait_until(lambda: all(h.alive for h in pipeline.health().values()), 60, 1.0)
    [taken] = [e for e in ledger.audit.events(held_uid) if e.type == "lease_taken_back"]
    assert taken.actor == "stage:delivery" and taken.detail["owner"] == job.lease_owner
    assert len(sr_instances(orthanc, held_uid)) == 1
