from __future__ import annotations

from core.config import RoutingConfig, RoutingRule
from core.routing import AiSwitches, Router
from core.types import InstanceMeta

CXR = "1.2.840.10008.5.1.4.1.1.1.1"


def inst(uid, series="s1", modality="DX", body="CHEST", desc="PA", sop_class=CXR):
    return InstanceMeta(
        uid,
        sop_class,
        "study",
        series,
        modality,
        "1.2.840.10008.1.2.1",
        "/p",
        "h",
        1,
        0.0,
        body_part=body,
        series_description=desc,
    )


def router(disabled=(), rules=None):
    rules = rules or (
        RoutingRule(name="cxr", family="chest_xray", modalities=("CR", "DX"), body_parts=("CHEST",), priority=5),
        RoutingRule(name="ct-head", family="head_ct", modalities=("CT",), series_description=r"head|brain"),
    )
    return Router(RoutingConfig(rules=rules, ai_disabled_modalities=disabled), ["chest_xray", "head_ct"])


def test_first_matching_rule_wins_per_series():
    d = router().decide(
        "study", [inst("1"), inst("2"), inst("3", series="s2", modality="CT", desc="Head w/o")], AiSwitches()
    )
    assert {t.family: set(t.sop_instance_uids) for t in d.tasks} == {"chest_xray": {"1", "2"}, "head_ct": {"3"}}
    assert d.skipped == ()
    assert d.priority == 5


def test_unmatched_series_are_skipped_with_a_reason():
    d = router().decide("study", [inst("1", modality="MR")], AiSwitches())
    assert d.tasks == ()
    assert d.skipped[0][0] == "1"
    assert "no routing rule matched" in d.skipped[0][1] and "MR" in d.skipped[0][1]


def test_series_description_regex_is_case_insensitive_search():
    r = router()
    assert r.match(inst("1", modality="CT", desc="AXIAL BRAIN 5mm")).family == "head_ct"
    assert r.match(inst("1", modality="CT", desc="abdomen")) is None


def test_study_switch_skips_everything():
    d = router().decide("study", [inst("1")], AiSwitches(studies_off=frozenset({"study"})))
    assert d.tasks == () and "study" in d.reason


def test_modality_switch_overrides_config_both_ways():
    off_in_config = router(disabled=("DX",))
    assert off_in_config.decide("study", [inst("1")], AiSwitches()).tasks == ()
    back_on = off_in_config.decide("study", [inst("1")], AiSwitches(modalities={"DX": True}))
    assert back_on.tasks[0].family == "chest_xray"
    off_now = router().decide("study", [inst("1")], AiSwitches(modalities={"DX": False}))
    assert off_now.tasks == () and "modality DX" in off_now.reason


def test_rule_naming_an_undeployed_family_skips():
    rules = (RoutingRule(name="r", family="gone", modalities=("DX",)),)
    r = Router(RoutingConfig(rules=rules), ["chest_xray"])
    d = r.decide("study", [inst("1")], AiSwitches())
    assert d.tasks == () and "not deployed" in d.reason
