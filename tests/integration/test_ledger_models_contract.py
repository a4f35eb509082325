"""The ledger's model versions (issue 17) on both backends: the live version and halts, changed
with their audit event in one transaction; shadow results; what a version was observed to do."""

from __future__ import annotations

import pytest

import state.ledger.models as models_repo
from core.ledger import RecordSrVersions
from core.records import Finding, Prediction
from core.results import SrVersion
from core.rollout import HaltCause, LiveSetting, RolloutState, compare
from core.types import AuditEventType, CodedTerm, InstanceMeta, JobState
from core.versions import VersionState
from state.ledger import Ledger, open_ledger
from state.migrate import pending

FAMILY = "chest_xray"
TERM = CodedTerm("1", "99X", "x")


@pytest.fixture
def ledger(backend, storage_for):
    led = open_ledger(storage_for(backend))
    yield led
    led.close()


def prediction(version: str, study: str = "1.2.3", **probabilities: float) -> Prediction:
    findings = tuple(Finding(k, TERM, p, 0.5) for k, p in probabilities.items())
    return Prediction(FAMILY, "cxr", version, findings, (study + ".1.1",))


def events_of(ledger: Ledger, kind: AuditEventType) -> list:
    return [e for e in ledger.audit.events() if e.type == kind.value]


def test_the_migration_applies_on_both_backends(ledger):
    assert pending(ledger.db.url, "ledger", ledger.backend) == []  # type: ignore[attr-defined]
    assert ledger.models.rollout(FAMILY) == RolloutState(FAMILY)


def test_a_promotion_makes_the_version_live_supersedes_the_old_one_and_is_audited(ledger):
    state = ledger.models.promote(FAMILY, "2.0", "1.0", "user:ann", "canary agreed", 100.0)
    assert state.live == LiveSetting("2.0", "user:ann", 100.0, "canary agreed")
    [old] = state.halted
    assert (old.version, old.cause, old.actor, old.at) == ("1.0", HaltCause.SUPERSEDED, "user:ann", 100.0)
    assert ledger.models.rollout(FAMILY) == state  # read back afresh
    [event] = events_of(ledger, AuditEventType.MODEL_PROMOTED)
    assert event.actor == "user:ann"
    assert event.detail == {"family": FAMILY, "version": "2.0", "previous": "1.0", "reason": "canary agreed"}
    assert ledger.audit.verify() is None


def test_promoting_a_halted_version_clears_its_halt(ledger):
    ledger.models.rollback(FAMILY, "1.0", ["2.0"], "user:ann", "false positives", 100.0)
    assert [h.version for h in ledger.models.rollout(FAMILY).halted] == ["2.0"]
    state = ledger.models.promote(FAMILY, "2.0", "1.0", "user:bob", "", 200.0)
    assert state.live is not None and state.live.version == "2.0"
    assert [(h.version, h.cause) for h in state.halted] == [("1.0", HaltCause.SUPERSEDED)]


def test_a_rollback_makes_the_version_live_and_halts_those_rolled_back_from(ledger):
    ledger.models.promote(FAMILY, "2.0", "1.0", "user:ann", "", 100.0)
    state = ledger.models.rollback(FAMILY, "1.0", ["2.0", "1.0"], "user:bob", "false positives", 200.0)
    assert state.live == LiveSetting("1.0", "user:bob", 200.0, "false positives")
    assert [(h.version, h.cause, h.reason) for h in state.halted] == [("2.0", HaltCause.ROLLED_BACK, "false positives")]
    [event] = events_of(ledger, AuditEventType.MODEL_ROLLED_BACK)
    assert event.detail == {"family": FAMILY, "version": "1.0", "from": ["2.0"], "reason": "false positives"}
    assert ledger.models.rollout("other_family") == RolloutState("other_family")  # per family


def test_the_state_and_its_audit_event_commit_together_or_not_at_all(ledger, monkeypatch):
    def broken(*_a, **_k):
        raise RuntimeError("audit append failed")

    monkeypatch.setattr(models_repo, "append_events", broken)
    with pytest.raises(RuntimeError):
        ledger.models.promote(FAMILY, "2.0", "1.0", "user:ann", "", 100.0)
    with pytest.raises(RuntimeError):
        ledger.models.rollback(FAMILY, "1.0", ["2.0"], "user:ann", "", 100.0)
    assert ledger.models.rollout(FAMILY) == RolloutState(FAMILY)


def test_a_shadow_result_is_stored_once_per_job_and_summarised(ledger):
    live = prediction("1.0", edema=0.9, effusion=0.1)
    shadow = prediction("2.0", edema=0.4, effusion=0.2)
    ledger.models.record_shadow(7, "1.2.3", FAMILY, "1.0", "2.0", live, compare(live, live), 100.0)
    ledger.models.record_shadow(7, "1.2.3", FAMILY, "1.0", "2.0", shadow, compare(live, shadow), 101.0)  # a retry
    other = prediction("2.0", "1.2.4", edema=0.8, effusion=0.1)
    ledger.models.record_shadow(8, "1.2.4", FAMILY, "1.0", "2.0", other, compare(live, other), 102.0)
    assert ledger.models.shadow_predictions(FAMILY, "2.0", "1.2.3") == [shadow]
    s = ledger.models.shadow_summary(FAMILY, "2.0")
    assert (s.family, s.version, s.n, s.live_versions) == (FAMILY, "2.0", 2, ("1.0",))
    by_key = {f.key: f for f in s.findings}
    assert by_key["edema"].agreement_rate == 0.5
    assert by_key["edema"].mean_abs_delta == pytest.approx((0.5 + 0.1) / 2)
    assert ledger.models.shadow_summary(FAMILY, "3.0").n == 0


def _sr(ledger: Ledger, study: str, pred: Prediction, sop: str, t: float) -> None:
    """A study received and an SR of ``pred`` recorded for it, as the SR writer records it."""
    meta = InstanceMeta(
        study + ".1.1", "1.2.840.10008.5.1.4.1.1.1", study, study + ".1", "CR", "1.2.840.10008.1.2.1",
        f"/spool/{study}.dcm", "aa", 10, t,
    )  # fmt: skip
    ledger.intake.record(meta, t, t, "t")
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=t + 1)
    version = SrVersion(
        sop, "1.2.840.10008.5.1.4.1.1.88.34", sop + ".9", study, job.job_id, 1, FAMILY, "cxr",
        pred.model_version, "", pred,
    )  # fmt: skip
    ledger.jobs.transition(job, JobState.COMPLETE, t + 1, effects=[RecordSrVersions((version,))])


def test_a_version_is_observed_from_its_results_and_its_shadow_runs(ledger):
    _sr(ledger, "1.2.10", prediction("1.0", "1.2.10", edema=0.9, effusion=0.1), "1.2.10.7", 100.0)
    _sr(ledger, "1.2.11", prediction("1.0", "1.2.11", edema=0.2, effusion=0.1), "1.2.11.7", 110.0)
    _sr(ledger, "1.2.12", prediction("2.0", "1.2.12", edema=0.2, effusion=0.8), "1.2.12.7", 120.0)
    _sr(ledger, "1.2.13", prediction("1.0", "1.2.13", edema=0.7, effusion=0.7), "1.2.13.7", 130.0)
    ledger.db.run(
        lambda tx: tx.execute(
            "UPDATE sr_results SET state = ? WHERE sop_instance_uid = ?", (VersionState.SUPERSEDED.value, "1.2.13.7")
        )
    )
    one = ledger.models.observed(FAMILY, "1.0")
    assert (one.version, one.studies, one.results, one.positive_rate) == ("1.0", 2, 2, 0.5)
    assert one.positive_rate_by_finding == {"edema": 0.5, "effusion": 0.0}
    assert one.shadow is None and one.reader_agreement is None
    live = prediction("1.0", edema=0.9)
    ledger.models.record_shadow(
        9, "1.2.10", FAMILY, "1.0", "2.0", prediction("2.0", edema=0.8), compare(live, live), 1.0
    )
    two = ledger.models.observed(FAMILY, "2.0")
    assert (two.studies, two.results, two.positive_rate, two.positive_rate_by_finding) == (
        1,
        1,
        1.0,
        {"edema": 0.0, "effusion": 1.0},
    )
    assert two.shadow is not None and two.shadow.n == 1
    assert ledger.models.observed(FAMILY, "9.9").positive_rate is None
