"""The IT operations service layer (``api.operations``) over a real ledger, SQLite and PostgreSQL.

Jobs and quarantine entries are made through the ledger's own repositories (an instance
recorded, a job leased and moved on or retried to death), as the pipeline makes them.
"""

from __future__ import annotations

import pickle

import pytest

from api.operations import (
    LIMIT_MAX,
    Conflict,
    InvalidArgument,
    NotFound,
    Operations,
)
from core.config import RetryConfig, StorageConfig, parse_config
from core.errors import DependencyUnavailable, RejectedInput
from core.ledger import CoverStudy, HoldInQuarantine, RetryPolicy
from core.quarantine import QuarantineState
from core.types import AuditEventType, InstanceMeta, JobState, ValidationIssue
from state.ledger import Ledger, open_ledger

pytestmark = pytest.mark.integration

T0 = 1_000.0


class FakeModels:
    """A ``ModelControl`` that remembers what was deployed."""

    def __init__(self) -> None:
        self.apps: dict[str, str] = {}

    def list(self) -> dict[str, str]:
        return dict(self.apps)

    def deploy(self, family: str) -> list[str]:
        self.apps[f"model-{family}"] = "RUNNING"
        return [f"model-{family}"]

    def remove(self, family: str) -> list[str]:
        name = f"model-{family}"
        return [name] if self.apps.pop(name, None) is not None else []


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def app_config(storage: StorageConfig):
    entry = {
        "name": "cxr",
        "version": "1",
        "weights": "w.pt",
        "demo": True,  # no sha256 pinned (issue 13)
        "input": {"spatial_size": [8, 8], "channels": 1},
        "findings": [{"key": "edema"}],
    }
    return parse_config({"storage": storage.model_dump(), "models": {"chest_xray": entry}})


def meta(uid: str, study: str, t: float = T0) -> InstanceMeta:
    return InstanceMeta(
        uid,
        "1.2.840.10008.5.1.4.1.1.1",
        study,
        study + ".1",
        "CR",
        "1.2.840.10008.1.2.1",
        f"/spool/{uid}.dcm",
        "aa",
        10,
        t,
        "SCU",
        "CHEST",
        "",
        "k",
    )


def received_job(ledger: Ledger, study: str, *uids: str) -> int:
    """A study received and complete: its job is in ``complete``."""
    for uid in uids or (study + ".1.1",):
        ledger.intake.record(meta(uid, study), T0, T0, "listener")
    [job] = [j for j in ledger.jobs.lease(JobState.RECEIVING, "w", 100, 10.0, now=T0) if j.study_instance_uid == study]
    ledger.jobs.transition(job, JobState.COMPLETE, T0, effects=[CoverStudy()])
    return job.job_id


def dead_job(ledger: Ledger, study: str) -> int:
    """A job retried to death in ``complete``."""
    job_id = received_job(ledger, study)
    policy = RetryPolicy.from_config(RetryConfig(max_attempts=1))
    job = ledger.jobs.lease_job(job_id, JobState.COMPLETE, "w", 10.0, now=T0 + 1)
    assert ledger.jobs.defer(job, T0 + 1, policy, "boom", unavailable=False, actor="stage:x") is JobState.DEAD
    return job_id


def held_entry(ledger: Ledger, study: str) -> str:
    """A study whose second instance the validator held: its quarantine ID."""
    job_id = received_job(ledger, study, study + ".1.1", study + ".1.2")
    job = ledger.jobs.lease_job(job_id, JobState.COMPLETE, "w", 10.0, now=T0 + 1)
    issue = ValidationIssue("pixel_data_length", "Pixel Data (7FE0,0010): got 3 bytes; expected 128", study + ".1.2")
    ledger.jobs.transition(job, JobState.VALIDATED, T0 + 1, effects=[HoldInQuarantine(study + ".1.2", (issue,))])
    [entry] = ledger.quarantine.entries(study_uid=study)
    return entry.id


@pytest.fixture
def ledger(backend, storage_for):
    led = open_ledger(storage_for(backend))
    yield led
    led.close()


@pytest.fixture
def models() -> FakeModels:
    return FakeModels()


@pytest.fixture
def ops(ledger, models, tmp_path) -> Operations:
    return Operations(app_config(StorageConfig(var_dir=str(tmp_path / "var"))), ledger, models, Clock())


def test_jobs_are_listed_newest_first_filtered_and_paged(ops, ledger):
    ids = [received_job(ledger, f"1.2.{k}") for k in range(5)]
    dead = dead_job(ledger, "1.2.9")
    listed = ops.jobs()
    assert [j.job_id for j in listed] == [dead, *reversed(ids)]
    assert [j.job_id for j in ops.jobs(state=JobState.COMPLETE, limit=2)] == [ids[4], ids[3]]
    assert [j.job_id for j in ops.jobs(state="complete", limit=2, before=ids[3])] == [ids[2], ids[1]]
    assert [j.job_id for j in ops.jobs(study_uid="1.2.1")] == [ids[1]]
    assert ops.jobs(study_uid="") == listed  # an empty filter is no filter
    [one] = ops.dead_jobs()
    assert (one.job_id, one.state, one.dead_from, one.reason) == (dead, JobState.DEAD, JobState.COMPLETE, "boom")
    assert listed[1].dead_from is None and listed[1].study_uid == "1.2.4"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": LIMIT_MAX + 1}, "limit"),
        ({"before": 0}, "before"),
        ({"before": 2**63}, "before"),
        ({"state": "sleeping"}, "state"),
        ({"study_uid": "1.2.x"}, "study"),
        ({"study_uid": "1." * 40}, "study"),
        ({"study_uid": "1.2\x00"}, "study"),
    ],
)
def test_bad_job_listing_arguments_name_their_field(ops, kwargs, field):
    with pytest.raises(InvalidArgument) as caught:
        ops.jobs(**kwargs)
    assert caught.value.field == field and field in str(caught.value)


def test_a_job_shows_its_history_and_unknown_ids_are_not_found(ops, ledger):
    dead = dead_job(ledger, "1.2.3")
    other = received_job(ledger, "1.2.3.4")
    detail = ops.job(dead)
    assert detail.job.job_id == dead and detail.job.state is JobState.DEAD
    types = [e.type for e in detail.history]
    assert types == [AuditEventType.INSTANCE_RECEIVED, AuditEventType.JOB_DEAD]
    assert all(e.job_id == dead for e in detail.history)
    assert [e.job_id for e in ops.job(other).history] == [other]
    with pytest.raises(NotFound, match="job_id: got 999"):
        ops.job(999)
    for bad in (0, -1, 2**63):
        with pytest.raises(InvalidArgument, match="job_id"):
            ops.job(bad)


def test_replay_revives_a_dead_job_audited_with_the_actor(ops, ledger):
    dead = dead_job(ledger, "1.2.3")
    live = received_job(ledger, "1.2.4")
    assert ops.replay(dead, "token:ops-bot") is JobState.COMPLETE
    assert ops.job(dead).job.state is JobState.COMPLETE and ops.dead_jobs() == []
    [event] = [e for e in ops.job(dead).history if e.type == AuditEventType.JOB_REPLAYED]
    assert event.actor == "token:ops-bot" and event.detail == {"into": "complete"}
    with pytest.raises(Conflict, match="got state complete; expected a dead job"):
        ops.replay(dead, "token:ops-bot")  # twice: not dead any more
    with pytest.raises(Conflict):
        ops.replay(live, "token:ops-bot")
    with pytest.raises(NotFound):
        ops.replay(12345, "token:ops-bot")


def test_quarantine_list_show_release_discard_audited_with_the_actor(ops, ledger):
    first = held_entry(ledger, "1.2.3")
    second = held_entry(ledger, "1.2.4")
    assert [e.id for e in ops.quarantine_list()] == [second, first]
    assert [e.id for e in ops.quarantine_list(study_uid="1.2.3")] == [first]
    [shown] = ops.quarantine_show(first)
    assert shown.codes == ("pixel_data_length",) and shown.reasons[0].message.startswith("Pixel Data")
    assert [e.id for e in ops.quarantine_show("1.2.3")] == [first]  # by Study Instance UID
    [released] = ops.quarantine_release(first, "token:alice", "  pixels verified  ")
    assert (released.state, released.decided_by, released.decision_reason) == (
        QuarantineState.RELEASED,
        "token:alice",
        "pixels verified",
    )
    [discarded] = ops.quarantine_discard(second.lower(), "oidc:bob", "test shot")
    assert discarded.state is QuarantineState.DISCARDED and discarded.decided_by == "oidc:bob"
    assert ops.quarantine_list() == []
    assert {e.id for e in ops.quarantine_list(None)} == {first, second}
    assert [e.id for e in ops.quarantine_list("released")] == [first]
    events = {e.type: e for e in ops.audit_events(limit=LIMIT_MAX)}
    assert events[AuditEventType.QUARANTINE_RELEASED].actor == "token:alice"
    assert events[AuditEventType.QUARANTINE_RELEASED].detail["reason"] == "pixels verified"
    assert events[AuditEventType.QUARANTINE_DISCARDED].actor == "oidc:bob"
    # the release reopened the study: a new receiving job
    assert [j.state for j in ops.jobs(study_uid="1.2.3")][0] is JobState.RECEIVING


def test_quarantine_refusals(ops, ledger):
    entry = held_entry(ledger, "1.2.3")
    with pytest.raises(NotFound, match="Q999"):
        ops.quarantine_show("Q999")
    with pytest.raises(NotFound):
        ops.quarantine_release("9.9.9", "token:x", "why")
    for junk in ("", "Qx", "1.2.x", "Q" + "9" * 30, "1." * 40):
        with pytest.raises(InvalidArgument) as caught:
            ops.quarantine_show(junk)
        assert caught.value.field == "id"
    for reason in ("", "   ", "a\x00b", "x" * 2001):
        with pytest.raises(InvalidArgument) as caught:
            ops.quarantine_discard(entry, "token:x", reason)
        assert caught.value.field == "reason"
    ops.quarantine_discard(entry, "token:x", "bad")
    with pytest.raises(Conflict, match="got state discarded; expected a held instance to release"):
        ops.quarantine_release(entry, "token:x", "changed my mind")
    with pytest.raises(InvalidArgument, match="state"):
        ops.quarantine_list("lost")


def test_ai_switches_are_set_listed_and_audited(ops, ledger):
    assert ops.ai_switches() == []
    study = ops.set_ai_switch("study", "1.2.3", False, "research study", "token:rad")
    modality = ops.set_ai_switch("modality", "cr", True, "", "user:op")
    assert (modality.key, modality.enabled, modality.actor) == ("CR", True, "user:op")
    assert ops.ai_switches() == [modality, study]
    assert ledger.controls.ai_switches().studies_off == {"1.2.3"}
    again = ops.set_ai_switch("study", "1.2.3", True, "consent given", "token:rad2")
    assert ops.ai_switches() == [modality, again] and again.at > study.at
    changes = [e for e in ops.audit_events() if e.type == AuditEventType.AI_SWITCH_CHANGED]
    assert [(e.actor, e.detail["key"], e.detail["enabled"]) for e in changes] == [
        ("token:rad", "1.2.3", False),
        ("user:op", "CR", True),
        ("token:rad2", "1.2.3", True),
    ]
    assert changes[0].study_uid == "1.2.3" and changes[1].study_uid == ""
    for scope, key, field in (
        ("series", "1.2", "scope"),
        ("study", "CR", "key"),
        ("study", "", "key"),
        ("modality", "C\x00R", "key"),
        ("modality", "X" * 17, "key"),
    ):
        with pytest.raises(InvalidArgument) as caught:
            ops.set_ai_switch(scope, key, True, "", "token:x")
        assert caught.value.field == field


def test_audit_events_page_and_the_chain_verifies(ops, ledger):
    for k in range(5):
        received_job(ledger, f"1.2.{k}")
    events = ops.audit_events(limit=LIMIT_MAX)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    first = ops.audit_events(limit=2)
    rest = ops.audit_events(limit=LIMIT_MAX, after=first[-1].seq)
    assert first + rest == events
    assert [e.study_uid for e in ops.audit_events("1.2.3")] == ["1.2.3"]
    assert ops.audit_verify() is None
    for kwargs, field in (({"limit": 0}, "limit"), ({"after": -1}, "after"), ({"study_uid": "x"}, "study")):
        with pytest.raises(InvalidArgument) as caught:
            ops.audit_events(**kwargs)
        assert caught.value.field == field


def test_models_are_listed_deployed_and_removed_through_the_control(ops, models, ledger, tmp_path):
    assert ops.models_list() == {}
    assert ops.models_deploy("chest_xray", "token:admin") == ["model-chest_xray"]
    assert ops.models_list() == {"model-chest_xray": "RUNNING"}
    with pytest.raises(NotFound, match=r"family: got 'brain_ct'; expected one of \['chest_xray'\]"):
        ops.models_deploy("brain_ct", "token:admin")
    assert ops.models_remove("chest_xray", "token:admin") == ["model-chest_xray"]
    with pytest.raises(NotFound, match="expected a deployed family"):
        ops.models_remove("chest_xray", "token:admin")
    for bad in ("../etc", "", "x" * 65):
        with pytest.raises(InvalidArgument, match="family"):
            ops.models_remove(bad, "token:admin")
        with pytest.raises(InvalidArgument, match="family"):
            ops.models_deploy(bad, "token:admin")
    without = Operations(app_config(StorageConfig(var_dir=str(tmp_path))), ledger)
    with pytest.raises(DependencyUnavailable):
        without.models_list()


def test_status_and_readiness(ops, ledger, backend, storage_for, tmp_path):
    received_job(ledger, "1.2.3")
    dead_job(ledger, "1.2.4")
    held_entry(ledger, "1.2.5")
    report = ops.status()
    assert report.jobs["complete"] == 1 and report.jobs["dead"] == 1 and report.jobs["validated"] == 1
    assert report.quarantine.held == 1
    assert ops.readiness() == ""
    gone = open_ledger(storage_for(backend, var_dir=tmp_path / "gone"))
    gone.close()
    cfg = app_config(StorageConfig(var_dir=str(tmp_path / "gone")))
    assert "the ledger does not answer" in Operations(cfg, gone).readiness()


def test_operation_errors_survive_pickling_and_are_rejected_input():
    for exc in (NotFound("job_id: got 9", "9"), Conflict("not held", "Q1"), InvalidArgument("limit: got 0", "limit")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and back.args == exc.args and str(back) == str(exc)
        assert isinstance(back, RejectedInput)
    assert InvalidArgument("limit: got 0", "limit").field == "limit"


def test_the_cli_is_a_client_of_the_same_operations(tmp_path, capsys):
    from actors.cli import main
    from api.auth import Authenticator

    config = tmp_path / "pacsai.yaml"
    config.write_text(f"storage: {{var_dir: {tmp_path / 'var'}}}\n")
    ledger = open_ledger(StorageConfig(var_dir=str(tmp_path / "var")))
    try:
        dead = dead_job(ledger, "1.2.3")
        entry = held_entry(ledger, "1.2.4")

        def cli(*args: str) -> tuple[int, str, str]:
            code = main([*args, "--config", str(config)])
            out = capsys.readouterr()
            return code, out.out, out.err

        assert cli("replay", str(dead), "--user", "ann")[:2] == (0, f"job {dead} replayed into complete\n")
        code, _, err = cli("replay", str(dead))
        assert code == 1 and "expected a dead job" in err
        assert cli("replay", "0")[0] == 1  # refused by the service layer, as over REST
        assert cli("quarantine", "discard", entry, "--reason", " ")[0] == 1
        assert cli("ai", "off", "--modality", "cr", "--user", "ann")[1] == "AI off for modality CR\n"
        assert cli("ai", "off", "--modality", "C R")[0] == 1
        code, out, _ = cli("audit", "show", "--limit", "1500")
        assert code == 0 and len(out.splitlines()) == len(ledger.audit.events(limit=5000))
        code, out, _ = cli(
            "tokens", "create", "gateway", "--scope", "ingest", "--expires-in-days", "1", "--user", "ann"
        )
        text = out.splitlines()[-1]
        principal = Authenticator(ledger.tokens, None, cache_s=0).authenticate(f"Bearer {text}")
        assert (code, principal.subject, principal.scopes) == (0, "token:gateway", frozenset({"ingest"}))
        token_id = text.split("_")[1]
        assert token_id in cli("tokens", "list")[1]
        assert cli("tokens", "revoke", token_id, "--user", "ann")[:2] == (0, f"token {token_id} (gateway) revoked\n")
        assert cli("tokens", "list")[1] == "tokens: none\n"
        assert cli("tokens", "revoke", "f" * 16)[0] == 1
        assert cli("tokens", "create", "bad name", "--scope", "read")[0] == 2
        actors = {e.type: e.actor for e in ledger.audit.events(limit=5000)}
        assert actors[AuditEventType.JOB_REPLAYED] == actors[AuditEventType.AI_SWITCH_CHANGED] == "user:ann"
        assert actors[AuditEventType.API_TOKEN_REVOKED] == "user:ann"
    finally:
        ledger.close()
