"""Pixels are decoded once on the way to a model (issue 14): the replica is the decoder of what a
model reads, so an instance it cannot decode is quarantined by the inference stage, as the
validator would have, and the study goes on without it. Over a real SQLite ledger and fake Serve
applications."""

from __future__ import annotations

from pathlib import Path

from actors.validator import model_reads
from core.config import RoutingConfig
from core.errors import UndecodablePixels
from core.job import Job, JobRecord
from core.ledger import CoverStudy
from core.records import ModelTask, Route
from core.routing import Router
from core.types import AuditEventType, InstanceMeta, JobState
from state.ledger import Ledger
from tests.fakes import FakeClock
from tests.unit.test_inference_versions import FAMILY, FakeApp, FakeResponse, Work, ledger, models

__all__ = ["ledger"]  # the fixture, shared with the versions tests

STUDY = "1.2.9"


class BrokenPixels(FakeApp):
    """Answers like ``FakeApp``, but a request holding one of ``broken`` fails on that instance."""

    def __init__(self, broken: set[str]) -> None:
        super().__init__("1.0", 0.9)
        self.broken = broken

    def remote(self, request):  # noqa: ANN001, ANN201 - the Serve handle's shape
        bad = [uid for uid, _ in request.instances if uid in self.broken]
        if not bad:
            return super().remote(request)
        self.requests.append(request)
        self.responses.append(FakeResponse(UndecodablePixels(f"Cannot decode Pixel Data of {bad[0]}", bad[0])))
        return self.responses[-1]


def linked_job(ledger: Ledger, tmp_path: Path, n: int) -> tuple[Job, list[str]]:
    """A CT job of ``n`` instances walked to ``linked`` with one task for the family."""
    uids = []
    for k in range(n):
        path = tmp_path / f"{k}.dcm"
        path.write_bytes(b"DICM")
        uid = f"{STUDY}.1.{k + 1}"
        meta = InstanceMeta(uid, "1.2.840.10008.5.1.4.1.1.2", STUDY, STUDY + ".1", "CT", "1.2.840.10008.1.2.4.80",
                            str(path), "aa", 4, 10.0, "MOD1")  # fmt: skip
        ledger.intake.record(meta, 10.0, 10.0, "t")
        uids.append(uid)
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 60.0, now=11.0)
    record = JobRecord(route=Route((ModelTask(FAMILY, tuple(uids)),), "routed"))
    for state in (JobState.COMPLETE, JobState.VALIDATED, JobState.ROUTED, JobState.LINKED):
        ledger.jobs.transition(
            job, state, 11.0, record=record, effects=[CoverStudy()] if state is JobState.COMPLETE else []
        )
        [job] = ledger.jobs.lease(state, "w", 1, 60.0, now=11.0)
    return job, uids


def run(ledger: Ledger, app: FakeApp, job: Job) -> Job:
    cfg = models()
    Work(
        {"model-chest_xray": app}, ledger, cfg, Router(RoutingConfig(), list(cfg)), "stage:inference", (), FakeClock()
    )(job)
    return ledger.jobs.get(job.job_id)


def test_an_instance_the_replica_cannot_decode_is_quarantined_and_the_rest_inferred(ledger, tmp_path):
    job, uids = linked_job(ledger, tmp_path, 3)
    app = BrokenPixels({uids[1]})
    done = run(ledger, app, job)
    assert done.state is JobState.INFERRED and done.attempts == 0
    [pred] = done.record.inference.predictions
    assert pred.source_uids == (uids[0], uids[2])  # asked again without the broken one
    assert [len(r.instances) for r in app.requests] == [3, 2]
    [held] = ledger.quarantine.entries(study_uid=STUDY)  # held, with its file, as the validator holds
    assert (held.sop_instance_uid, held.codes) == (uids[1], ("pixel_data_undecodable",))
    quarantined = [e for e in ledger.audit.events(STUDY) if e.type == AuditEventType.QUARANTINED.value]
    assert [(e.sop_instance_uid, e.detail["codes"]) for e in quarantined] == [(uids[1], ["pixel_data_undecodable"])]


def test_a_study_whose_every_model_instance_is_undecodable_ends_quarantined(ledger, tmp_path):
    job, uids = linked_job(ledger, tmp_path, 2)
    done = run(ledger, BrokenPixels(set(uids)), job)
    assert done.state is JobState.QUARANTINED
    assert done.record.inference.predictions == ()
    assert sorted(e.sop_instance_uid for e in ledger.quarantine.entries(study_uid=STUDY)) == sorted(uids)


def test_the_validator_checks_only_frame_headers_of_what_a_model_will_decode():
    cfg = RoutingConfig(rules=[{"name": "ct", "family": "head_ct_haemorrhage", "modalities": ["CT"]}])
    reads = model_reads(Router(cfg, ["head_ct_haemorrhage"]))
    ct = InstanceMeta(
        "1.1", "1.2.840.10008.5.1.4.1.1.2", "1", "1.1", "CT", "1.2.840.10008.1.2.4.80", "p", "a", 1, 0.0, "M"
    )
    mr = InstanceMeta(
        "1.2", "1.2.840.10008.5.1.4.1.1.4", "1", "1.2", "MR", "1.2.840.10008.1.2.4.80", "p", "a", 1, 0.0, "M"
    )
    assert reads(ct) and not reads(mr)  # MR: no rule, so the validator decodes it itself
    assert not model_reads(Router(cfg, []))(ct)  # the family is not deployed
