"""core.review: review flags you can work (who may resolve what, and why)."""

from __future__ import annotations

import json

import pytest

from core.errors import AccessDenied, RejectedInput
from core.priors import Conflict, RefusalKind
from core.review import (
    FlagKind,
    FlagState,
    Resolution,
    Reviewer,
    ReviewFlag,
    ReviewRole,
    confirmed_priors,
    flag_for_refusal,
    released_versions,
    resolve,
)

ADMIN = Reviewer("user:ada", frozenset({ReviewRole.PACS_ADMIN}))
RAD = Reviewer("user:rita", frozenset({ReviewRole.RADIOLOGIST}))
OPS = Reviewer("user:otto", frozenset({ReviewRole.OPERATOR}))


def flag(kind=FlagKind.PRIOR_UNVERIFIED, **kw):
    return ReviewFlag(7, kind, "1.2.1", "1.2.0", {"differing": ["PatientName"]}, 100.0, **kw)


def test_a_refused_prior_raises_the_flag_of_its_kind():
    f = flag_for_refusal(
        Conflict("1.2.0", ("IssuerOfPatientID",), "20250101", RefusalKind.ISSUER_MISMATCH),
        "1.2.1",
        {"patient_key": "k"},
        5.0,
    )
    assert (f.kind, f.other_study_uid, f.state, f.flag_id) == (
        FlagKind.PRIOR_ISSUER_MISMATCH,
        "1.2.0",
        FlagState.OPEN,
        0,
    )
    assert f.detail == {"differing": ["IssuerOfPatientID"], "patient_key": "k"}
    assert {str(k) for k in RefusalKind} <= {str(k) for k in FlagKind}


def test_resolving_records_who_why_and_when_and_is_final():
    done = resolve(flag(), RAD, Resolution.SAME_PATIENT, "  same  face, same\nfracture plate ", 200.0)
    assert (done.state, done.resolution, done.resolved_by, done.resolved_at, done.reason) == (
        FlagState.RESOLVED,
        Resolution.SAME_PATIENT,
        "user:rita",
        200.0,
        "same face, same fracture plate",
    )
    assert done.audit_detail() == {
        "flag_id": 7,
        "kind": "prior_unverified",
        "other_study_uid": "1.2.0",
        "resolution": "same_patient",
        "reason": "same face, same fracture plate",
    }
    assert ReviewFlag.from_json(json.loads(json.dumps(done.to_json()))) == done
    with pytest.raises(RejectedInput, match="resolved by user:rita"):
        resolve(done, ADMIN, Resolution.DIFFERENT_PATIENT, "second thoughts", 300.0)


@pytest.mark.parametrize("reason", ["", "   ", "x" * 1025])
def test_a_reason_is_required(reason):
    with pytest.raises(RejectedInput, match="reason"):
        resolve(flag(), ADMIN, Resolution.ACKNOWLEDGED, reason, 1.0)


def test_no_user_no_resolution():
    with pytest.raises(RejectedInput, match="user"):
        resolve(flag(), Reviewer(" ", frozenset({ReviewRole.PACS_ADMIN})), Resolution.ACKNOWLEDGED, "ok", 1.0)


@pytest.mark.parametrize(
    ("kind", "resolution", "allowed", "denied"),
    [
        (FlagKind.PRIOR_IDENTITY_CONFLICT, Resolution.SAME_PATIENT, ADMIN, RAD),
        (FlagKind.PRIOR_ISSUER_MISMATCH, Resolution.SAME_PATIENT, ADMIN, RAD),
        (FlagKind.PRIOR_IDENTITY_CONFLICT, Resolution.DIFFERENT_PATIENT, RAD, OPS),
        (FlagKind.PRIOR_UNVERIFIED, Resolution.SAME_PATIENT, RAD, OPS),
        (FlagKind.SR_VERSION_CAP, Resolution.RELEASED, OPS, RAD),
        (FlagKind.SENDER_TIGHTENED, Resolution.ACKNOWLEDGED, ADMIN, RAD),
    ],
)
def test_who_may_resolve_what(kind, resolution, allowed, denied):
    assert resolve(flag(kind), allowed, resolution, "checked", 1.0).state is FlagState.RESOLVED
    with pytest.raises(AccessDenied) as info:
        resolve(flag(kind), denied, resolution, "checked", 1.0)
    assert info.value.principal == denied.user and str(kind) in info.value.action


def test_a_resolution_must_fit_the_kind():
    with pytest.raises(RejectedInput, match="expected one of"):
        resolve(flag(FlagKind.SENDER_TIGHTENED), ADMIN, Resolution.SAME_PATIENT, "no", 1.0)


def test_resolutions_feed_back_into_linking_and_delivery():
    same = resolve(flag(), ADMIN, Resolution.SAME_PATIENT, "checked the chart", 1.0)
    different = resolve(replace_other(flag(), "1.2.9"), ADMIN, Resolution.DIFFERENT_PATIENT, "other", 1.0)
    conflict = resolve(flag(FlagKind.PRIOR_IDENTITY_CONFLICT), ADMIN, Resolution.SAME_PATIENT, "married", 1.0)
    assert confirmed_priors([same, different, conflict, flag()], "1.2.1") == {"1.2.0"}
    assert confirmed_priors([same], "1.2.5") == frozenset()
    cap = ReviewFlag(8, FlagKind.SR_VERSION_CAP, "1.2.1", detail={"family": "head_ct", "held_version": 6})
    released = resolve(cap, OPS, Resolution.RELEASED, "final read needs it", 2.0)
    assert released_versions([released, cap], "1.2.1", "head_ct") == {6}
    assert released_versions([released], "1.2.1", "chest_xray") == frozenset()


def replace_other(f, other):
    from dataclasses import replace

    return replace(f, other_study_uid=other)
