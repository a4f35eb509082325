"""core.ian: Instance Availability Notification (PS3.4 R, PS3.3 C.4.23)."""

from __future__ import annotations

import json

import pytest
from pydicom.dataset import Dataset

from core.errors import DimseRefused
from core.ian import (
    Availability,
    AvailabilityNotice,
    AvailableInstance,
    NoticesState,
    judge_notices,
    notice_from_n_create,
)
from core.mpps import NStatus

IAN = "1.2.826.0.1.3680043.10.3.1"
STUDY = "1.2.826.0.1.3680043.10.2.1"
SE1, SE2, OURS = "1.2.3.1", "1.2.3.2", "1.2.3.9"
CT = "1.2.840.10008.5.1.4.1.1.2"


def sop(uid, availability="ONLINE"):
    item = Dataset()
    item.ReferencedSOPClassUID = CT
    item.ReferencedSOPInstanceUID = uid
    item.InstanceAvailability = availability
    item.RetrieveAETitle = "PACS"
    return item


def series(uid, *sops):
    item = Dataset()
    item.SeriesInstanceUID = uid
    item.ReferencedSOPSequence = list(sops)
    return item


def notice_ds(*series_items, study=STUDY, steps=()):
    ds = Dataset()
    if study is not None:
        ds.StudyInstanceUID = study
    ds.ReferencedSeriesSequence = list(series_items)
    step_items = []
    for uid in steps:
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.3"
        item.ReferencedSOPInstanceUID = uid
        step_items.append(item)
    ds.ReferencedPerformedProcedureStepSequence = step_items
    return ds


def test_a_notice_lists_the_instances_and_their_availability():
    ds = notice_ds(series(SE1, sop("1.2.3.1.1"), sop("1.2.3.1.2", "NEARLINE")), steps=("1.2.3.7",))
    notice = notice_from_n_create(ds, IAN, " PACS ", 5.0)
    assert (notice.study_uid, notice.step_uids, notice.calling_ae, notice.received_at) == (
        STUDY,
        ("1.2.3.7",),
        "PACS",
        5.0,
    )
    assert notice.instances[1] == AvailableInstance(SE1, "1.2.3.1.2", Availability.NEARLINE, CT)
    assert AvailabilityNotice.from_json(json.loads(json.dumps(notice.to_json()))) == notice


@pytest.mark.parametrize(
    ("ds", "status", "offending"),
    [
        (notice_ds(series(SE1, sop("1.2.3.1.1")), study=None), NStatus.MISSING_ATTRIBUTE, (0x0020000D,)),
        (notice_ds(), NStatus.MISSING_ATTRIBUTE, (0x00081115,)),
        (notice_ds(series("", sop("1.2.3.1.1"))), NStatus.MISSING_ATTRIBUTE_VALUE, (0x0020000E,)),
        (notice_ds(series(SE1, sop(""))), NStatus.MISSING_ATTRIBUTE_VALUE, (0x00081155,)),
        (notice_ds(series(SE1, sop("1.2.3.1.1", "GONE"))), NStatus.INVALID_ATTRIBUTE_VALUE, (0x00080056,)),
    ],
)
def test_refusals(ds, status, offending):
    with pytest.raises(DimseRefused) as info:
        notice_from_n_create(ds, IAN, "PACS", 1.0)
    assert (info.value.status, info.value.offending) == (status, offending)


def notice(*instances, at=1.0, study=STUDY):
    return AvailabilityNotice(f"9.{at}", study, tuple(AvailableInstance(*i) for i in instances), received_at=at)


def test_complete_when_every_retrievable_instance_is_held():
    first = notice(
        (SE1, "a", Availability.ONLINE), (SE1, "b", Availability.OFFLINE), (SE1, "gone", Availability.UNAVAILABLE)
    )
    verdict = judge_notices([first], STUDY, {"a"}, {SE1})
    assert (verdict.state, verdict.missing, verdict.missing_series) == (NoticesState.MISSING, {"b"}, (SE1,))
    assert judge_notices([first], STUDY, {"a", "b"}, {SE1}).state is NoticesState.COMPLETE


def test_notices_add_up_and_a_later_availability_wins():
    first = notice((SE1, "a", Availability.ONLINE), at=1.0)
    second = notice((SE1, "a", Availability.UNAVAILABLE), (SE2, "c", Availability.ONLINE), at=2.0)
    verdict = judge_notices([second, first], STUDY, set(), {SE1, SE2})
    assert verdict.missing == {"c"} and verdict.notices == 2 and verdict.expected == 1


def test_own_series_scope_and_other_studies():
    n = notice((SE1, "a", Availability.ONLINE), (SE2, "b", Availability.ONLINE), (OURS, "sr", Availability.ONLINE))
    assert judge_notices([n], STUDY, {"a", "b"}, {SE1, SE2}, {OURS}).state is NoticesState.COMPLETE
    assert judge_notices([n], STUDY, {"a"}, {SE1}, {OURS}, "series").state is NoticesState.COMPLETE
    assert judge_notices([n], STUDY, {"a"}, {SE1}, {OURS}, "study").state is NoticesState.MISSING
    assert judge_notices([n], "1.2.9", set(), set()).state is NoticesState.NONE
    only_gone = notice((SE1, "x", Availability.UNAVAILABLE))
    assert judge_notices([only_gone], STUDY, set(), {SE1}).state is NoticesState.NONE
