"""Results for readers over HTTP (``api.clinical``, issue 12): ``create_app`` in process over a real
SQLite ledger, callers with real API tokens, results stored through the ledger's job transitions.

Each role sees only what it should (property-based: random policies, users and findings, no
response carries a finding outside the caller's policy); reviews are audited and replaced; the
policy reloads without a restart and a bad file is refused with the old policy kept.
"""

from __future__ import annotations

import itertools
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from api.auth import issue_token
from core.alert_policy import AlertPolicy
from core.interval import PriorFinding, PriorResult
from core.job import PriorLink, PriorStudy
from core.parametric_maps import encode_levels
from core.priors import PriorStatus
from core.records import AxisScale, Finding, FrameRef, HeatmapRef, PlanarRegion, PlaneGrid
from core.types import AuditEventType, CodedTerm, InstanceMeta
from state.ledger.clinical import policy_sql
from synthetic.synthetic_dicom import make_cxr_study, save_study
from tests.integration.api_harness import ApiHarness, make_harness
from tests.integration.test_ledger_clinical import store_result
from tests.unit.core.test_alert_policy import roles as role_specs
from tests.unit.core.test_alert_policy import rules as rule_specs

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
BASE = "/api/v1/clinical"


def _model(name: str, keys: list[str]) -> dict:
    return {
        "name": name,
        "version": "1",
        "weights": "w.pt",
        "demo": True,
        "input": {"spatial_size": [8, 8], "channels": 1},
        "findings": [{"key": k} for k in keys],
    }


MODELS = {
    "chest_xray": _model("cxr", ["nodule", "pneumothorax"]),
    "head_ct_haemorrhage": _model("ich", ["subdural"]),
}
FAMILY_KEYS = {"chest_xray": ["nodule", "pneumothorax"], "head_ct_haemorrhage": ["subdural"]}
POLICY = {
    "priority_rules": {"stat_orders": {"order_priorities": ["stat"]}},
    "roles": {
        "chief": {},
        "chest": {"exclude_families": ["head_ct_haemorrhage"]},
        "er": {"critical_only": True, "critical_findings": ["subdural", "pneumothorax"], "quality_flags": False},
        "tech": {"quality_flags_only": True, "push": False},
        "junior": {"min_probability": 0.92, "priority_rules": ["stat_orders"]},
    },
    "users": {"dr-chest": ["chest"], "dr-er": ["er"], "tech-1": ["tech"], "dr-junior": ["junior"]},
}


def _write(path: Path, policy: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(policy))
    tmp.replace(path)


def _harness(tmp_path: Path, storage, policy: dict, reload_s: float) -> ApiHarness:
    policy_file = tmp_path / "roles.yaml"
    _write(policy_file, policy)
    clinical = {"policy_file": str(policy_file), "policy_reload_s": reload_s}
    return make_harness(tmp_path, storage, models=MODELS, clinical=clinical)


class Tokens:
    """Bearer headers of real API tokens, one per user name and scope set."""

    def __init__(self, api: ApiHarness) -> None:
        self._api = api
        self._made: dict[tuple[str, tuple[str, ...]], dict[str, str]] = {}

    def __call__(self, user: str, *scopes: str) -> dict[str, str]:
        key = (user, tuple(sorted(scopes)))
        if key not in self._made:
            text, _ = issue_token(self._api.ctx.ledger.tokens, user, list(scopes), None, "test", time.time())
            self._made[key] = {"Authorization": f"Bearer {text}"}
        return self._made[key]


def problem(res, status: int) -> dict:
    assert res.status_code == status, res.text
    assert res.headers["content-type"].startswith(PROBLEM)
    return res.json()


def _events(api: ApiHarness, kind: AuditEventType) -> list:
    api.ctx.audit.close()  # flush the request audit's batch; the ledger's own events are there already
    return [e for e in api.ctx.ledger.audit.events(limit=100_000) if e.type == kind]


def _term(key: str) -> CodedTerm:
    return CodedTerm("1", "99TEST", key.title())


def _cxr_with_heatmap(api: ApiHarness, tmp_path: Path) -> tuple[InstanceMeta, Finding, HeatmapRef]:
    """A real radiograph in the spool and a nodule on it with a region and a stored heatmap."""
    [ds] = make_cxr_study(7, frozenset({"nodule"}), size=128, study_uid="2.25.71")
    [path] = save_study([ds], tmp_path / "spool")
    uid, sop_class = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
    meta = InstanceMeta(
        uid, sop_class, "2.25.71", str(ds.SeriesInstanceUID), "DX", str(ds.file_meta.TransferSyntaxUID),
        str(path), "aa", path.stat().st_size, 100.0, "SCU", "CHEST", "", "k",
    )  # fmt: skip
    frame = FrameRef(uid, sop_class)
    region = PlanarRegion(frame, ((30.5, 30.5), (90.5, 30.5), (90.5, 90.5), (30.5, 90.5), (30.5, 30.5)), (60.5, 60.5))
    heat = np.zeros((16, 16))
    heat[4:12, 4:12] = 1.0
    blob = api.ctx.ledger.blobs.put(encode_levels(heat))
    grid = PlaneGrid(frame, 128, 128, AxisScale(8.0, 3.5), AxisScale(8.0, 3.5))
    nodule = Finding("nodule", _term("nodule"), 0.95, 0.5, False, None, frame, region)
    return meta, nodule, HeatmapRef("nodule", grid, (16, 16), blob)


def test_readers_see_their_worklists_review_and_the_policy_reloads(tmp_path, storage_for):
    api = _harness(tmp_path, storage_for("sqlite"), POLICY, reload_s=0.05)
    token = Tokens(api)
    ledger, c = api.ctx.ledger, api.client
    meta, nodule, heatmap = _cxr_with_heatmap(api, tmp_path)
    pneumothorax = Finding("pneumothorax", _term("pneumothorax"), 0.7, 0.5, True)
    [s1] = store_result(
        ledger, "2.25.71", "chest_xray", [nodule, pneumothorax], 100.0, "stat", ("motion_artefact",),
        instance=meta, heatmaps=(heatmap,),
    )  # fmt: skip
    [s2] = store_result(
        ledger, "2.25.72", "head_ct_haemorrhage", [Finding("subdural", _term("s"), 0.8, 0.5, True)], 110.0
    )
    earlier = PriorResult(
        "2.25.70", "20240101", "chest_xray", "cxr", "1", "ledger",
        (PriorFinding("nodule", 0.2, False), PriorFinding("pneumothorax", 0.9, True)),
    )  # fmt: skip
    link = PriorLink(PriorStatus.FOUND, "prior of 20240101", PriorStudy("2.25.70", "20240101"), results=(earlier,))
    [s3] = store_result(
        ledger, "2.25.73", "chest_xray", [Finding("nodule", _term("nodule"), 0.6, 0.5)], 120.0, "routine", priors=link
    )

    def worklist(user: str) -> list[tuple[str, list[str]]]:
        res = c.get(f"{BASE}/worklist", headers=token(user, "read"))
        assert res.status_code == 200, res.text
        return [(i["study_uid"], [a["finding"] for a in i["alerts"]]) for i in res.json()["items"]]

    # Who I am; each role its own worklist, critical first, then the order's priority.
    me = c.get(f"{BASE}/me", headers=token("dr-chest", "read")).json()
    assert me == {"user": "dr-chest", "roles": ["chest"], "may_review": False}
    assert c.get(f"{BASE}/me", headers=token("dr-chest", "review")).json()["may_review"]
    assert worklist("dr-chest") == [("2.25.71", ["nodule", "pneumothorax", "motion_artefact"]), ("2.25.73", ["nodule"])]
    assert worklist("dr-er") == [("2.25.71", ["pneumothorax"]), ("2.25.72", ["subdural"])]
    assert worklist("tech-1") == [("2.25.71", ["motion_artefact"])]
    assert worklist("dr-junior") == [("2.25.71", ["nodule", "pneumothorax", "motion_artefact"])]  # STAT rule
    problem(c.get(f"{BASE}/worklist", headers=token("stranger", "read")), 403)
    problem(c.get(f"{BASE}/worklist?all=true", headers=token("dr-chest", "read")), 403)
    everything = c.get(f"{BASE}/worklist?all=true&limit=2", headers=token("ops", "operate")).json()
    assert [i["study_uid"] for i in everything["items"]] == ["2.25.71", "2.25.72"] and everything["total"] == 3
    problem(c.get(f"{BASE}/worklist?limit=0", headers=token("dr-chest", "read")), 422)

    # A result: only what the role sees; a result it sees nothing of does not exist for it.
    res = c.get(f"{BASE}/results/{s1.sop_instance_uid}", headers=token("dr-er", "read"))
    assert res.status_code == 200, res.text
    body = res.json()
    assert [f["finding"] for f in body["findings"]] == ["pneumothorax"] and body["prior"] is None
    assert body["findings"][0]["critical"] and not body["findings"][0]["has_heatmap"]
    problem(c.get(f"{BASE}/results/{s2.sop_instance_uid}", headers=token("dr-chest", "read")), 404)
    later = c.get(f"{BASE}/results/{s3.sop_instance_uid}", headers=token("dr-chest", "read")).json()
    assert later["prior"]["findings"] == [{"finding": "nodule", "probability": 0.2, "present": False}]  # no more
    assert [(f["finding"], f["interval_change"]) for f in later["findings"]] == [("nodule", "new")]
    problem(c.get(f"{BASE}/results/2.25.999", headers=token("dr-chest", "read")), 404)
    assert len(_events(api, AuditEventType.RESULT_VIEWED)) == 2

    # The frame with the heatmap (from the stored heatmap) and the region; viewing it is recorded.
    png = c.get(f"{BASE}/results/{s1.sop_instance_uid}/image.png?finding=nodule", headers=token("dr-chest", "read"))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png", png.text
    plain = c.get(
        f"{BASE}/results/{s1.sop_instance_uid}/image.png?finding=nodule&overlay=false", headers=token("dr-er", "read")
    )
    problem(plain, 404)  # the ER role is not shown the nodule
    plain = c.get(
        f"{BASE}/results/{s1.sop_instance_uid}/image.png?finding=nodule&overlay=false",
        headers=token("dr-chief", "read"),
    )
    problem(plain, 403)  # no role at all
    plain = c.get(
        f"{BASE}/results/{s1.sop_instance_uid}/image.png?finding=nodule&overlay=false",
        headers=token("dr-junior", "read"),
    )
    hot, cold = (np.asarray(Image.open(BytesIO(r.content)).convert("RGB")).astype(int) for r in (png, plain))
    assert hot.shape == cold.shape and hot.shape[1] == 128 and hot.shape[0] > 128  # the banner above the frame
    redness = lambda a: int((a[..., 0] - a[..., 2]).clip(0).sum())  # noqa: E731
    assert redness(hot) > redness(cold) + 1000  # the heatmap is blended in
    problem(
        c.get(
            f"{BASE}/results/{s1.sop_instance_uid}/image.png?finding=pneumothorax", headers=token("dr-chest", "read")
        ),
        404,
    )

    # Reviews: scope review; agree / disagree checked; audited per finding; a re-review replaces.
    url = f"{BASE}/results/{s1.sop_instance_uid}/reviews"
    agree = {"reader_name": "Chest^Dr", "findings": [{"finding": "nodule", "assessment": "agree", "final_present": True, "comment": "spiculated"}], "final_diagnosis": "nodule"}  # fmt: skip
    problem(c.post(url, json=agree, headers=token("dr-chest", "read")), 403)
    bad = {**agree, "findings": [{"finding": "nodule", "assessment": "agree", "final_present": False}]}
    assert "final_present=True" in problem(c.post(url, json=bad, headers=token("dr-chest", "review")), 422)["detail"]
    assert "assessment" in problem(c.post(url, json={**agree, "findings": [{"finding": "nodule", "assessment": "maybe", "final_present": True}]}, headers=token("dr-chest", "review")), 422)["detail"]  # fmt: skip
    problem(c.post(url, json=agree, headers=token("dr-er", "review")), 403)  # the nodule is not the ER's
    res = c.post(url, json=agree, headers=token("dr-chest", "review"))
    assert res.status_code == 201, res.text
    assert res.json()["version"] == 1 and res.json()["verified_sr_uid"] == ""
    disagree = {"findings": [{"finding": "nodule", "assessment": "disagree", "final_present": False, "comment": "scar"}, {"finding": "pneumothorax", "assessment": "override", "final_present": True}], "final_diagnosis": "scar"}  # fmt: skip
    res = c.post(url, json=disagree, headers=token("dr-chest", "review"))
    assert res.status_code == 201 and res.json()["version"] == 2, res.text
    reviews = c.get(f"{BASE}/results/{s1.sop_instance_uid}", headers=token("dr-chest", "read")).json()["reviews"]
    assert [(r["finding"], r["assessment"], r["comment"], r["submission_version"]) for r in reviews] == [
        ("nodule", "disagree", "scar", 2), ("pneumothorax", "override", "", 2),
    ]  # fmt: skip
    er_reviews = c.get(f"{BASE}/results/{s1.sop_instance_uid}", headers=token("dr-er", "read")).json()["reviews"]
    assert [r["finding"] for r in er_reviews] == ["pneumothorax"]  # no review of what the ER is not shown
    reviewed = _events(api, AuditEventType.FINDING_REVIEWED)
    assert [(e.detail["finding"], e.detail["assessment"], e.detail["review_version"]) for e in reviewed] == [
        ("nodule", "agree", 1), ("nodule", "disagree", 2), ("pneumothorax", "override", 2),
    ]  # fmt: skip
    assert all(e.sop_instance_uid == s1.sop_instance_uid and e.detail["heatmap_viewed"] for e in reviewed)
    assert all(e.actor == "token:dr-chest" and "scar" not in str(e.detail) for e in reviewed)
    assert [e["reviewed"] for e in c.get(f"{BASE}/worklist", headers=token("dr-chest", "read")).json()["items"]] == [
        True,
        False,
    ]

    # The policy reloads without a restart (on the timer or on demand) and each change is audited once.
    problem(c.post(f"{BASE}/policy/reload", headers=token("dr-chest", "read")), 403)
    assert c.post(f"{BASE}/policy/reload", headers=token("ops", "operate")).json()["changed"] is False
    assert len(_events(api, AuditEventType.ALERT_POLICY_CHANGED)) == 1  # the first load
    _write(api.ctx.policy._path, {**POLICY, "users": {**POLICY["users"], "tech-1": ["tech", "chest"]}})
    time.sleep(0.1)
    assert [s for s, _ in worklist("tech-1")] == ["2.25.71", "2.25.73"]
    changed = _events(api, AuditEventType.ALERT_POLICY_CHANGED)
    assert len(changed) == 2 and changed[-1].detail["changes"] == ["users.tech-1 changed"]

    # A bad file is refused, naming the field; the policy in force stays; refused once per content.
    broken = {**POLICY, "roles": {**POLICY["roles"], "chest": {"exclude_families": ["chest_xrays"]}}}
    _write(api.ctx.policy._path, broken)
    refused = problem(c.post(f"{BASE}/policy/reload", headers=token("ops", "operate")), 422)
    assert "roles.chest.exclude_families" in refused["detail"]
    _write(api.ctx.policy._path, {**POLICY, "roles": {**POLICY["roles"], "tech": {"quality_only": True}}})
    assert "roles.tech.quality_only" in problem(c.post(f"{BASE}/policy/reload", headers=token("ops", "operate")), 422)["detail"]  # fmt: skip
    problem(c.post(f"{BASE}/policy/reload", headers=token("ops", "operate")), 422)
    time.sleep(0.1)
    assert [s for s, _ in worklist("tech-1")] == ["2.25.71", "2.25.73"]
    assert len(_events(api, AuditEventType.ALERT_POLICY_REJECTED)) == 2
    assert len(_events(api, AuditEventType.ALERT_POLICY_CHANGED)) == 2

    # Without a policy file the clinical routes are not there.
    api.ctx.policy, holder = None, api.ctx.policy
    assert "not configured" in problem(c.get(f"{BASE}/worklist", headers=token("dr-chest", "read")), 404)["detail"]
    api.ctx.policy = holder
    api.close()


# ---- for random policies, users and stored findings: no answer carries a finding outside the policy ----

USERS = ["u1", "u2", "u3"]
_STUDIES = itertools.count(1)


@st.composite
def policies(draw: st.DrawFn) -> dict:
    roles = draw(st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), role_specs(), min_size=1, max_size=4))
    users = {u: draw(st.lists(st.sampled_from(sorted(roles)), max_size=2, unique=True)) for u in USERS}
    return {"roles": roles, "priority_rules": {"r1": draw(rule_specs), "r2": draw(rule_specs)}, "users": users}


@st.composite
def studies(draw: st.DrawFn) -> tuple[str, list[Finding], str | None, tuple[str, ...]]:
    family = draw(st.sampled_from(sorted(FAMILY_KEYS)))
    keys = draw(st.lists(st.sampled_from(FAMILY_KEYS[family]), min_size=1, unique=True))
    found = [
        Finding(k, _term(k), draw(st.floats(0.0, 1.0)), draw(st.sampled_from([0.3, 0.5, 0.9])), draw(st.booleans()))
        for k in keys
    ]
    priority = draw(st.sampled_from([None, "stat", "asap", "urgent", "routine"]))
    flags = tuple(draw(st.lists(st.sampled_from(["motion_artefact", "incomplete_series"]), max_size=2, unique=True)))
    return family, found, priority, flags


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One API for every example (the stored results accumulate, as they would in a department)."""
    from core.config import LedgerConfig, StorageConfig

    root = tmp_path_factory.mktemp("clinical-property")
    api = _harness(root, StorageConfig(var_dir=str(root / "var"), ledger=LedgerConfig()), {"roles": {"a": {}}}, 3600.0)
    yield api, Tokens(api)
    api.close()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), st.lists(studies(), min_size=1, max_size=2))
def test_no_answer_carries_a_finding_outside_the_callers_policy(shared, policy_spec: dict, new: list) -> None:
    api, token = shared
    ledger, c = api.ctx.ledger, api.client
    for family, found, priority, flags in new:
        n = next(_STUDIES)
        store_result(ledger, f"2.25.5.{n}", family, found, 1000.0 + 10 * n, priority, flags)
    _write(api.ctx.policy._path, policy_spec)
    api.ctx.policy.reload()
    policy: AlertPolicy = api.ctx.policy.current()
    every = {r.sr_uid for r in ledger.pushes.items_after(0, 100_000)}  # one version per study: all latest
    for user in [*USERS, "ghost"]:
        roles = policy.roles_of(user)
        res = c.get(f"{BASE}/worklist?limit=200", headers=token(user, "read"))
        if not roles:
            problem(res, 403)
            continue
        assert res.status_code == 200, res.text
        items = res.json()["items"]
        for entry in items:
            by_key = {(i.key, i.quality_flag): i for i in ledger.clinical.items_of(entry["sr_uid"])}
            shown = [by_key[(a["finding"], a["quality_flag"])] for a in entry["alerts"]]
            assert shown and all(policy.visible(roles, i) for i in shown)
            assert shown == policy.filter(roles, ledger.clinical.items_of(entry["sr_uid"]))  # all it may see, in order
        expected = {sr for sr in every if policy.filter(roles, ledger.clinical.items_of(sr))}
        where, args = policy_sql(policy, roles)  # the worklist's prefilter is exact: it fetches no extra rows
        with ledger.db.read() as tx:
            rows = tx.all(f"SELECT a.sr_uid, a.finding, a.quality_flag FROM alert_items a WHERE {where}", args)
        prefiltered = {(r["sr_uid"], r["finding"], bool(r["quality_flag"])) for r in rows}
        exact = {
            (sr, i.key, i.quality_flag) for sr in every for i in policy.filter(roles, ledger.clinical.items_of(sr))
        }
        assert prefiltered == exact
        assert {e["sr_uid"] for e in items} == expected  # the compiled query neither hides nor adds
        keys = [
            (not e["critical"], {"stat": 0, "asap": 1, "routine": 2, None: 3}[e["order_priority"]], -e["created_at"])
            for e in items
        ]
        assert keys == sorted(keys)
        for sr in sorted(every)[-4:]:
            res = c.get(f"{BASE}/results/{sr}", headers=token(user, "read"))
            allowed = policy.filter(roles, ledger.clinical.items_of(sr))
            if not allowed:
                problem(res, 404)
                continue
            got = [(f["finding"], f["quality_flag"]) for f in res.json()["findings"]]
            assert got == [(i.key, i.quality_flag) for i in allowed]
