"""Versions side by side (core.rollout): which version a study meets, shadow comparisons, the card."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import ModelEntry
from core.records import Finding, Prediction
from core.rollout import (
    READER_AGREEMENT_NOTE,
    AssignmentReason,
    FindingComparison,
    Halt,
    HaltCause,
    LiveSetting,
    ObservedMetrics,
    RolloutState,
    ShadowComparison,
    StudyFacts,
    assign,
    build_card,
    canary_bucket,
    compare,
    live_version,
    rollback_halts,
    summarize,
    traffic_now,
    version_app,
)
from core.types import CodedTerm

FAMILY = "chest_xray"


def entry(**versions: dict) -> ModelEntry:
    """A family entry of version 1.0 with ``versions`` beside it."""
    return ModelEntry.model_validate(
        {
            "name": "cxr",
            "version": "1.0",
            "weights": "w.pt",
            "input": {"spatial_size": [8, 8], "channels": 1},
            "findings": [{"key": "edema"}, {"key": "effusion"}],
            "card": {"description": "chest radiograph triage", "license": "Apache-2.0"},
            "versions": versions,
        }
    )


def study(uid: str = "1.2.3", modalities: tuple[str, ...] = ("CR",), aes: tuple[str, ...] = ("MOD1",)) -> StudyFacts:
    return StudyFacts(uid, frozenset(modalities), frozenset(aes))


def uids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"2.25.{rng.getrandbits(128)}" for _ in range(n)]


def halt(version: str, cause: HaltCause = HaltCause.ROLLED_BACK) -> Halt:
    return Halt(version, cause, "user:ann", 10.0, "bad")


def live(version: str) -> LiveSetting:
    return LiveSetting(version, "user:ann", 5.0, "go")


# ------------------------------------------------------------------------------- live version
def test_the_family_entry_is_live_until_the_ledger_says_otherwise():
    e = entry(**{"2.0": {"weights": "w2.pt"}})
    assert live_version(e, RolloutState(FAMILY)) == "1.0"
    assert live_version(e, RolloutState(FAMILY, live("2.0"))) == "2.0"


def test_a_live_version_no_longer_configured_falls_back_to_the_family_entry():
    e = entry(**{"2.0": {"weights": "w2.pt"}})
    a = assign(FAMILY, e, RolloutState(FAMILY, live("3.0")), study())
    assert (a.version, a.live, a.reason) == ("1.0", "1.0", AssignmentReason.LIVE)


def test_a_family_without_versions_always_meets_its_entry():
    a = assign(FAMILY, entry(), RolloutState(FAMILY), study())
    assert (a.version, a.live, a.shadows) == ("1.0", "1.0", ())


def test_the_application_of_the_family_entry_keeps_its_name_and_others_get_their_version():
    e = entry(**{"2.0": {"weights": "w2.pt"}})
    assert version_app(FAMILY, e, "1.0") == "model-chest_xray"
    assert version_app(FAMILY, e, "2.0") == "model-chest_xray--2.0"


# ---------------------------------------------------------------------------------- traffic
def test_off_gives_a_version_no_study():
    e = entry(**{"2.0": {"weights": "w2.pt"}})
    for uid in uids(50, 1):
        a = assign(FAMILY, e, RolloutState(FAMILY), study(uid))
        assert (a.version, a.shadows) == ("1.0", ())


def test_shadow_runs_on_every_study_beside_the_live_version():
    e = entry(**{"2.0": {"traffic": {"mode": "shadow"}}})
    for uid in uids(20, 2):
        a = assign(FAMILY, e, RolloutState(FAMILY), study(uid))
        assert (a.version, a.reason, a.shadows) == ("1.0", AssignmentReason.LIVE, ("2.0",))


def test_a_rule_sends_the_studies_of_its_modalities_or_sites_to_the_candidate():
    e = entry(**{"2.0": {"traffic": {"mode": "rule", "modalities": ["DX"], "calling_aes": ["SITE_B"]}}})
    state = RolloutState(FAMILY)
    assert assign(FAMILY, e, state, study(modalities=("dx",))).version == "2.0"  # modality case ignored
    assert assign(FAMILY, e, state, study(aes=("SITE_B",))).reason is AssignmentReason.RULE
    assert assign(FAMILY, e, state, study(modalities=("CR",), aes=("SITE_A",))).version == "1.0"


def test_a_rule_comes_before_a_canary():
    e = entry(
        **{
            "2.0": {"traffic": {"mode": "canary", "percent": 99.9}},
            "3.0": {"traffic": {"mode": "rule", "modalities": ["CR"]}},
        }
    )
    assert {assign(FAMILY, e, RolloutState(FAMILY), study(u)).version for u in uids(30, 3)} == {"3.0"}


def test_a_canary_study_meets_the_same_version_every_time():
    e = entry(**{"2.0": {"traffic": {"mode": "canary", "percent": 30}}})
    for uid in uids(100, 4):
        first = assign(FAMILY, e, RolloutState(FAMILY), study(uid))
        again = assign(FAMILY, e, RolloutState(FAMILY), study(uid, ("DX",), ("OTHER",)))
        assert first == again
        assert (first.version == "2.0") == (canary_bucket(FAMILY, uid) < 30)


def test_the_canary_hash_is_keyed_by_family():
    buckets = [(canary_bucket("a", u), canary_bucket("b", u)) for u in uids(200, 5)]
    assert all(0 <= x < 100 and 0 <= y < 100 for x, y in buckets)
    assert sum((x < 50) == (y < 50) for x, y in buckets) < 150  # not the same split


def _canary_share(uid_list: list[str], percent: float) -> int:
    e = entry(**{"2.0": {"traffic": {"mode": "canary", "percent": percent}}})
    return sum(assign(FAMILY, e, RolloutState(FAMILY), study(u)).version == "2.0" for u in uid_list)


def _within(n_canary: int, n: int, p: float, sigmas: float) -> bool:
    return abs(n_canary - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_a_50_percent_canary_splits_200_studies_within_binomial_bounds():
    assert _within(_canary_share(uids(200, 6), 50), 200, 0.5, 3)  # 100 +- 21


@settings(derandomize=True, max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=2**128), min_size=200, max_size=200, unique=True))
def test_a_canary_splits_any_200_random_studies_within_binomial_bounds(numbers: list[int]):
    uid_list = [f"2.25.{n}" for n in numbers]
    # 4 sigma for each of the 25 drawn sets (3 sigma over one fixed set above).
    assert _within(_canary_share(uid_list, 50), 200, 0.5, 4)
    assert _within(_canary_share(uid_list, 10), 200, 0.1, 4)


def test_two_canaries_never_share_a_study_and_each_gets_its_share():
    e = entry(
        **{
            "2.0": {"traffic": {"mode": "canary", "percent": 20}},
            "3.0": {"traffic": {"mode": "canary", "percent": 30}},
        }
    )
    got = [assign(FAMILY, e, RolloutState(FAMILY), study(u)) for u in uids(2000, 7)]
    shares = {v: sum(a.version == v for a in got) for v in ("1.0", "2.0", "3.0")}
    assert _within(shares["2.0"], 2000, 0.2, 4) and _within(shares["3.0"], 2000, 0.3, 4)
    assert shares["1.0"] + shares["2.0"] + shares["3.0"] == 2000


def test_a_halted_version_gets_nothing_and_its_canary_share_goes_back_to_live():
    e = entry(
        **{
            "2.0": {"traffic": {"mode": "canary", "percent": 50}},
            "3.0": {"traffic": {"mode": "canary", "percent": 20}},
            "4.0": {"traffic": {"mode": "shadow"}},
        }
    )
    before = {u: assign(FAMILY, e, RolloutState(FAMILY), study(u)).version for u in uids(300, 8)}
    state = RolloutState(FAMILY, halted=(halt("2.0"), halt("4.0")))
    after = {u: assign(FAMILY, e, state, study(u)) for u in before}
    assert all(a.shadows == () for a in after.values())
    for u, version in before.items():  # 3.0 keeps exactly its studies; 2.0's go to the live one
        assert after[u].version == ("1.0" if version == "2.0" else version)


def test_the_live_version_ignores_its_own_traffic_and_the_old_one_follows_its_own():
    e = entry(**{"2.0": {"traffic": {"mode": "shadow"}}})
    state = RolloutState(FAMILY, live("2.0"))
    a = assign(FAMILY, e, state, study())
    assert (a.version, a.live, a.shadows) == ("2.0", "2.0", ())  # 1.0's traffic is off
    superseded = RolloutState(FAMILY, live("2.0"), (halt("1.0", HaltCause.SUPERSEDED),))
    assert traffic_now(e, superseded, "1.0") == "halted (superseded)"
    assert traffic_now(e, state, "2.0") == "live"


def test_traffic_now_says_what_each_version_gets():
    e = entry(
        **{
            "2.0": {"traffic": {"mode": "canary", "percent": 12.5}},
            "3.0": {"traffic": {"mode": "rule", "modalities": ["DX"], "calling_aes": ["SITE_B"]}},
            "4.0": {"traffic": {"mode": "shadow"}},
            "5.0": {},
        }
    )
    state = RolloutState(FAMILY)
    assert [traffic_now(e, state, v) for v in ("1.0", "2.0", "3.0", "4.0", "5.0")] == [
        "live",
        "canary 12.5%",
        "rule: modalities DX; calling AEs SITE_B",
        "shadow",
        "off",
    ]


def test_a_rollback_halts_the_live_version_or_the_candidates_beside_it():
    e = entry(
        **{
            "2.0": {"traffic": {"mode": "canary", "percent": 10}},
            "3.0": {"traffic": {"mode": "rule", "modalities": ["DX"]}},
            "4.0": {"traffic": {"mode": "shadow"}},
        }
    )
    assert rollback_halts(e, RolloutState(FAMILY, live("2.0")), "1.0") == ("2.0",)
    assert rollback_halts(e, RolloutState(FAMILY), "1.0") == ("2.0", "3.0")  # shadows keep running
    assert rollback_halts(e, RolloutState(FAMILY, halted=(halt("2.0"), halt("3.0"))), "1.0") == ()


# --------------------------------------------------------------------------- comparisons
TERM = CodedTerm("1", "99X", "x")


def prediction(version: str, **probabilities: float) -> Prediction:
    findings = tuple(Finding(k, TERM, p, 0.5) for k, p in probabilities.items())
    return Prediction(FAMILY, "cxr", version, findings, ("1.2.3.1",))


def test_a_shadow_is_compared_finding_by_finding():
    c = compare(prediction("1.0", edema=0.9, effusion=0.1), prediction("2.0", edema=0.6, effusion=0.7))
    assert [(f.key, f.agree) for f in c.findings] == [("edema", True), ("effusion", False)]
    assert [round(f.delta, 3) for f in c.findings] == [-0.3, 0.6]
    assert c.agreement == 0.5 and c.live_only == () and c.shadow_only == ()


def test_findings_only_one_version_reports_are_named_not_compared():
    c = compare(prediction("1.0", edema=0.9), prediction("2.0", nodule=0.8))
    assert (c.findings, c.live_only, c.shadow_only, c.agreement) == ((), ("edema",), ("nodule",), None)


def test_summaries_give_the_agreement_rate_per_finding_and_the_mean_absolute_delta():
    pairs = [
        ("1.0", compare(prediction("1.0", edema=0.9, effusion=0.1), prediction("2.0", edema=0.7, effusion=0.2))),
        ("1.0", compare(prediction("1.0", edema=0.9, effusion=0.1), prediction("2.0", edema=0.3, effusion=0.1))),
        ("1.5", compare(prediction("1.5", edema=0.2, effusion=0.6), prediction("2.0", edema=0.2, effusion=0.8))),
    ]
    s = summarize(FAMILY, "2.0", pairs)
    assert (s.n, s.live_versions) == (3, ("1.0", "1.5"))
    by_key = {f.key: f for f in s.findings}
    assert by_key["edema"].n == 3 and by_key["edema"].agreement_rate == pytest.approx(2 / 3)
    assert by_key["edema"].mean_abs_delta == pytest.approx((0.2 + 0.6 + 0.0) / 3)
    assert by_key["effusion"].agreement_rate == 1.0
    assert s.agreement_rate == pytest.approx(5 / 6)
    assert s.mean_abs_delta == pytest.approx((0.2 + 0.6 + 0.0 + 0.1 + 0.0 + 0.2) / 6)


def test_an_empty_summary_has_no_rates():
    s = summarize(FAMILY, "2.0", [])
    assert (s.n, s.findings, s.agreement_rate, s.mean_abs_delta) == (0, (), None, None)


def test_a_finding_comparison_agrees_when_both_say_present_or_both_absent():
    assert FindingComparison("a", True, True, 0.9, 0.6).agree
    assert FindingComparison("a", False, False, 0.1, 0.4).agree
    assert not FindingComparison("a", True, False, 0.5, 0.49).agree
    assert ShadowComparison(()).agreement is None


# ------------------------------------------------------------------------------ model card
def test_the_card_lists_every_version_with_its_declared_card_traffic_and_observations():
    e = entry(
        **{
            "2.0": {"traffic": {"mode": "shadow"}, "card": {"description": "retrained", "authors": "ACME"}},
            "1.5": {},
        }
    )
    state = RolloutState(FAMILY, live("1.5"), (halt("1.0", HaltCause.SUPERSEDED),))
    observed = {"2.0": ObservedMetrics("2.0", 3, 4, 0.25, {"edema": 0.25})}
    card = build_card(FAMILY, e, state, observed, {"model-chest_xray", "model-chest_xray--2.0"})
    assert (card.family, card.live, card.live_set) == (FAMILY, "1.5", live("1.5"))
    assert [v.version for v in card.versions] == ["1.0", "1.5", "2.0"]
    own, mid, new = card.versions
    assert (own.own, own.live, own.halted, own.traffic_now, own.deployed) == (
        True,
        False,
        halt("1.0", HaltCause.SUPERSEDED),
        "halted (superseded)",
        True,
    )
    assert (mid.live, mid.deployed, mid.application) == (True, False, "model-chest_xray--1.5")
    assert own.card.license == "Apache-2.0" and new.card.description == "retrained"  # a version's own card
    assert new.observed.positive_rate == 0.25 and new.traffic_now == "shadow"
    assert own.observed == ObservedMetrics("1.0")  # nothing observed yet
    assert own.observed.reader_agreement is None and own.observed.reader_agreement_note == READER_AGREEMENT_NOTE


def test_a_card_without_ray_does_not_know_what_is_deployed_and_without_a_setting_says_so():
    card = build_card(FAMILY, entry(), RolloutState(FAMILY, live("9.9")), {}, None)
    assert card.live == "1.0" and card.live_set is None  # a setting naming a removed version
    assert card.versions[0].deployed is None
