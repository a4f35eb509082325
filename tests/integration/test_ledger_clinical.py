"""The clinical repository's contract (issue 12), on both backends: alert items written with the
SR version, the policy-filtered worklist, reviews (sealed, audited, replaced), views and policy
versions."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from core.alert_policy import AlertItem, AlertPolicy, parse_policy
from core.audit import AuditEvent
from core.clinical import FindingDecision, ReviewRequest, worklist_key
from core.context import StudyContext
from core.job import JobRecord, PriorLink
from core.ledger import CoverStudy, MarkSrVersions, RecordSrVersions
from core.records import Finding, HeatmapRef, Prediction, QualityFlag
from core.results import SrVersion
from core.types import AuditEventType, CodedTerm, InstanceMeta, JobState
from core.versions import VersionState
from state.column_seal import TEXT_MARK
from state.ledger import Ledger, open_ledger

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
ROOT_POLICY = Path(__file__).resolve().parents[2] / "configs" / "roles.example.yaml"


@pytest.fixture
def ledger(backend, storage_for):
    led = open_ledger(storage_for(backend))
    yield led
    led.close()


def _finding(key: str, p: float, critical: bool = False) -> Finding:
    return Finding(key, CodedTerm("1", "99TEST", key), p, 0.5, critical)


def _meta(study: str, t: float) -> InstanceMeta:
    return InstanceMeta(
        f"{study}.1.1", "1.2.840.10008.5.1.4.1.1.2", study, f"{study}.1", "CT", "1.2.840.10008.1.2.1",
        f"/spool/{study}.dcm", "aa", 10, t, "SCU", "CHEST", "", "k",
    )  # fmt: skip


def store_result(
    ledger: Ledger,
    study: str,
    family: str,
    findings: list[Finding],
    t: float,
    priority: str | None = None,
    flags: tuple[str, ...] = (),
    versions: int = 1,
    earlier: list[Finding] | None = None,
    instance: InstanceMeta | None = None,
    heatmaps: tuple[HeatmapRef, ...] = (),
    priors: PriorLink | None = None,
) -> list[SrVersion]:
    """A study through the ledger to recorded SR versions (job versions 1..versions of one job;
    those before the last report ``earlier`` findings where given)."""
    ledger.intake.record(instance or _meta(study, t), t, t, "t")
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=t + 1)
    context = StudyContext("accession", "ServiceRequest/x", "Patient/y", priority=priority) if priority else None
    ledger.jobs.transition(
        job, JobState.COMPLETE, t + 1, record=JobRecord(context=context, priors=priors), effects=[CoverStudy()]
    )
    [job] = ledger.jobs.lease(JobState.COMPLETE, "w", 1, 10.0, now=t + 2)

    def prediction(said: list[Finding]) -> Prediction:
        flagged = tuple(QualityFlag(k, f"{study}.1", 5.0, 4.0) for k in flags)
        return Prediction(family, "m", "1.0", tuple(said), (f"{study}.1.1",), quality_flags=flagged, heatmaps=heatmaps)

    made = [
        SrVersion(
            f"{study}.9.{n}",
            SR_CLASS,
            f"{study}.9",
            study,
            job.job_id,
            n,
            family,
            "m",
            "1.0",
            "",
            prediction(findings if n == versions or earlier is None else earlier),
        )  # fmt: skip
        for n in range(1, versions + 1)
    ]
    ledger.jobs.transition(job, JobState.VALIDATED, t + 2, effects=[RecordSrVersions(tuple(made))])
    return made


def test_alert_items_worklists_reviews_and_policy_versions(ledger):
    policy = parse_policy(yaml.safe_load(ROOT_POLICY.read_text()))
    [a] = store_result(
        ledger, "1.1", "chest_xray", [_finding("nodule", 0.95), _finding("pneumothorax", 0.3, True)], 100.0,
        priority="urgent", flags=("motion_artefact", "motion_artefact"),
    )  # fmt: skip
    [b] = store_result(ledger, "1.2", "head_ct_haemorrhage", [_finding("subdural", 0.75, True)], 110.0)
    c1, c2 = store_result(
        ledger, "1.3", "chest_xray", [_finding("nodule", 0.99)], 120.0, "routine", versions=2,
        earlier=[_finding("nodule", 0.6)],
    )  # fmt: skip

    # One item per finding (present or not) and per flag (once), with the order's priority.
    assert ledger.clinical.items_of(a.sop_instance_uid) == [
        AlertItem("chest_xray", "nodule", 0.95, True, False, False, "asap"),
        AlertItem("chest_xray", "pneumothorax", 0.3, False, True, False, "asap"),
        AlertItem("quality", "motion_artefact", 1.0, True, False, True, "asap"),
    ]
    rows = ledger.pushes.items_after(0, 100)  # the one reader of items in order (events, webhooks)
    assert [r.sr_uid for r in rows] == [a.sop_instance_uid] * 3 + [b.sop_instance_uid] + [
        c1.sop_instance_uid,
        c2.sop_instance_uid,
    ]
    assert rows[3].alert.order_priority is None and rows[3].alert.family == b.family
    assert [r.item_id for r in ledger.pushes.items_after(rows[2].item_id, 2)] == [rows[3].item_id, rows[4].item_id]
    assert ledger.pushes.last_item_id() == rows[-1].item_id

    # Operators: every latest result with an alert; critical first, then priority, newest first.
    everything = ledger.clinical.worklist(None, [], "op", limit=10)
    assert [e.sr_uid for e in everything.entries] == [b.sop_instance_uid, a.sop_instance_uid, c2.sop_instance_uid]
    assert everything.entries[0].model_version == "1.0"  # b's, from sr_results
    assert everything.total == 3 and list(everything.entries) == sorted(everything.entries, key=worklist_key)
    page = ledger.clinical.worklist(None, [], "op", limit=1, offset=1)
    assert [e.sr_uid for e in page.entries] == [a.sop_instance_uid] and page.total == 3
    assert ledger.clinical.worklist(None, [], "op", limit=5, offset=7).entries == ()

    def seen(user: str) -> dict[str, list[str]]:
        got = ledger.clinical.worklist(policy, policy.roles_of(user), user, limit=10)
        return {e.study_uid: [x.key for x in e.alerts] for e in got.entries}

    assert seen("dr-er") == {"1.2": ["subdural"]}
    assert seen("tech-1") == {"1.1": ["motion_artefact"]}
    assert seen("dr-junior") == {"1.2": ["subdural"], "1.1": ["nodule", "motion_artefact"], "1.3": ["nodule"]}
    assert seen("nobody") == {}
    er = ledger.clinical.worklist(policy, ["er_attending"], "dr-er").entries[0]
    assert er.critical and er.top_probability == 0.75 and er.order_priority is None

    # A superseded version leaves the worklist; the one before it is the study's result again.
    job = ledger.jobs.lease_job(c1.job_id, JobState.VALIDATED, "w", 10.0, now=200.0)
    ledger.jobs.transition(
        job, JobState.ROUTED, 200.0, effects=[MarkSrVersions("1.3", "chest_xray", (2,), VersionState.SUPERSEDED)]
    )
    assert "1.3" not in seen("dr-junior")  # 0.99 was v2; v1's nodule is below the floor ...
    c1_entry = [e for e in ledger.clinical.worklist(None, [], "op").entries if e.study_uid == "1.3"]
    assert [e.sr_uid for e in c1_entry] == [c1.sop_instance_uid]  # ... the operators see v1

    # Reviews: one transaction, sealed, audited, replaced by a re-review.
    ai = {i.key: i for i in ledger.clinical.items_of(a.sop_instance_uid)}
    first = ReviewRequest(
        "Reader^Rita",
        (FindingDecision("nodule", "agree", True, "spiculated"), FindingDecision("pneumothorax", "agree", False)),
        "lung nodule, follow up",
        True,
    )
    receipt = ledger.clinical.record_review(a, "dr-chest", first, ai, "oidc:dr-chest", 300.0)
    assert receipt.version == 1
    again = ReviewRequest("Reader^Rita", (FindingDecision("nodule", "disagree", False, "scar"),), "scar", False)
    second = ledger.clinical.record_review(a, "dr-chest", again, ai, "oidc:dr-chest", 310.0)
    assert second.version == 2 and second.submission_id != receipt.submission_id
    reviews = ledger.clinical.reviews_of("1.1")
    assert [(r.finding, r.assessment, r.final_present, r.comment, r.submission_version) for r in reviews] == [
        ("nodule", "disagree", False, "scar", 2)
    ]
    assert ledger.clinical.worklist(None, [], "dr-chest").entries[1].reviewed
    events = [e for e in ledger.audit.events("1.1") if e.type == AuditEventType.FINDING_REVIEWED]
    assert [e.detail["finding"] for e in events] == ["nodule", "pneumothorax", "nodule"]
    assert events[0].detail["ai_probability"] == 0.95 and events[0].sop_instance_uid == a.sop_instance_uid
    assert events[2].detail["review_version"] == 2 and "scar" not in str(events[2].detail)
    with ledger.db.read() as tx:
        states = [r["state"] for r in tx.all("SELECT state FROM review_submissions ORDER BY submission_id")]
        stored = tx.one("SELECT final_diagnosis, heatmap_viewed FROM review_submissions WHERE version = 2")
        comment = tx.one("SELECT comment FROM finding_reviews")["comment"]
    assert states == ["superseded", "pending"]
    if ledger.keyring is not None:  # sealed at rest where the site encrypts (state.column_seal)
        assert stored["final_diagnosis"].startswith(TEXT_MARK) and comment.startswith(TEXT_MARK)

    # Views: first and last time, the heatmap remembered once seen.
    view = AuditEvent(AuditEventType.RESULT_VIEWED, "oidc:dr-chest", "1.1", a.sop_instance_uid)
    ledger.clinical.record_view(a.sop_instance_uid, "1.1", "dr-chest", True, view, 400.0)
    ledger.clinical.record_view(a.sop_instance_uid, "1.1", "dr-chest", False, view, 410.0)
    assert ledger.clinical.heatmap_viewed(a.sop_instance_uid, "dr-chest")
    assert not ledger.clinical.heatmap_viewed(b.sop_instance_uid, "dr-chest")

    # Policy versions: recorded once per change (going back is a change), refusals once per digest.
    changed = AuditEvent(AuditEventType.ALERT_POLICY_CHANGED, "api", detail={"digest": "d1"})
    assert ledger.clinical.record_policy("d1", ["roles.x added"], changed, 500.0)
    assert not ledger.clinical.record_policy("d1", [], changed, 501.0)  # a second replica
    assert ledger.clinical.record_policy("d2", ["roles.x changed"], changed, 502.0)
    assert ledger.clinical.record_policy("d1", ["roles.x changed"], changed, 503.0)
    rejected = AuditEvent(AuditEventType.ALERT_POLICY_REJECTED, "api", detail={"digest": "bad"})
    assert ledger.clinical.record_policy_rejected("bad", ["roles: missing"], rejected, 504.0)
    assert not ledger.clinical.record_policy_rejected("bad", ["roles: missing"], rejected, 505.0)
    assert [(d, s) for d, s, _, _ in ledger.clinical.policy_versions()] == [
        ("d1", "taken"), ("d2", "taken"), ("d1", "taken"), ("bad", "rejected"),
    ]  # fmt: skip
    kinds = [e.type for e in ledger.audit.events(limit=10_000)]
    assert kinds.count(AuditEventType.ALERT_POLICY_CHANGED) == 3
    assert kinds.count(AuditEventType.ALERT_POLICY_REJECTED) == 1
    assert ledger.audit.verify() is None


def test_the_compiled_policy_selects_exactly_what_the_policy_shows(ledger):
    """On both backends (floats, NULL priorities, the flag family): ``policy_sql`` == ``AlertPolicy.filter``."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from core.alert_policy import parse_policy as parse
    from state.ledger.clinical import policy_sql
    from tests.unit.core.test_alert_policy import roles as role_specs
    from tests.unit.core.test_alert_policy import rules as rule_specs

    rnd = random.Random(12)
    keys = {"chest_xray": ["nodule", "pneumothorax"], "head_ct_haemorrhage": ["subdural"]}
    for n in range(16):
        family = rnd.choice(sorted(keys))
        said = [_finding(k, rnd.choice([0.0, 0.5, 0.92, 1.0, rnd.random()]), rnd.random() < 0.5) for k in keys[family]]
        flags = ("motion_artefact",) if rnd.random() < 0.4 else ()
        store_result(
            ledger, f"3.{n}", family, said, 100.0 + 10 * n, rnd.choice([None, "stat", "asap", "routine"]), flags
        )
    store_result(ledger, "3.99", "chest_xray", [_finding("nodule", 0.92), _finding("pneumothorax", 0.5, True)], 300.0)
    stored = [(r.sr_uid, r.alert) for r in ledger.pushes.items_after(0, 1000)]

    def compare(policy: AlertPolicy, held: list[str]) -> None:
        where, args = policy_sql(policy, held)
        with ledger.db.read() as tx:
            rows = tx.all(f"SELECT a.sr_uid, a.finding, a.quality_flag FROM alert_items a WHERE {where}", args)
        got = {(r["sr_uid"], r["finding"], bool(int(r["quality_flag"]))) for r in rows}
        assert got == {(sr, i.key, i.quality_flag) for sr, i in stored if policy.visible(held, i)}

    edges = {  # floors exactly at a stored probability, where ">=" and ">" part
        "roles": {"floor": {"min_probability": 0.92}, "rule": {"min_probability": 1.0, "priority_rules": ["edge"]}},
        "priority_rules": {"edge": {"min_probability": 0.5, "findings": ["pneumothorax"]}},
    }
    for held in (["floor"], ["rule"]):
        compare(parse(edges), held)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        st.dictionaries(st.sampled_from(["a", "b", "c"]), role_specs(), min_size=1, max_size=3),
        st.fixed_dictionaries({"r1": rule_specs, "r2": rule_specs}),
        st.lists(st.sampled_from(["a", "b", "c", "ghost"]), max_size=2),
        st.lists(st.sampled_from([None, 0.5, 0.92, 1.0]), min_size=5, max_size=5),
    )
    def check(roles: dict, rules: dict, held: list[str], edges: list[float | None]) -> None:
        # Floors exactly at stored probabilities, where ">=" and ">" part.
        for spec, edge in zip([*roles.values(), *rules.values()], edges, strict=False):
            if edge is not None:
                spec["min_probability"] = edge
        compare(parse({"roles": roles, "priority_rules": rules}), held)

    check()
