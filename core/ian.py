"""IHE Instance Availability Notification (IAN): the PACS says which instances it holds.

Where the PACS sends it (IHE RAD TF-2 RAD-49, Instance Availability Notification SOP Class,
PS3.4 Annex R), each N-CREATE lists, for one study, the instances the PACS stores and their
Instance Availability (0008,0056): ONLINE, NEARLINE, OFFLINE or UNAVAILABLE (PS3.3 C.4.23).
A PACS may send several notices for one study as more arrives; they add up, and a later notice
for the same instance replaces the earlier availability. The study is complete on this
evidence when we hold every instance listed as retrievable (not UNAVAILABLE), leaving out our
own result series and, with ``count_scope: series``, the series that are not sent to us.

``notice_from_n_create`` refuses a notice missing a Type 1 attribute (0120H / 0121H) or with an
undefined availability (0106H), as ``DimseRefused``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from core.errors import DimseRefused
from core.mpps import NStatus

__all__ = [
    "Availability",
    "AvailabilityNotice",
    "AvailableInstance",
    "IAN_SOP_CLASS_UID",
    "NoticesState",
    "NoticesVerdict",
    "judge_notices",
    "notice_from_n_create",
]

IAN_SOP_CLASS_UID = "1.2.840.10008.5.1.4.33"
"""Instance Availability Notification SOP Class (PS3.4 R.3)."""

_STUDY_UID = 0x0020000D
_SERIES_SEQ = 0x00081115
_SERIES_UID = 0x0020000E
_SOP_UID = 0x00081155
_AVAILABILITY = 0x00080056


class Availability(enum.StrEnum):
    """Instance Availability (0008,0056), PS3.3 C.4.23.1.1."""

    ONLINE = "ONLINE"
    """Retrievable at once."""
    NEARLINE = "NEARLINE"
    """Retrievable after a delay (e.g. from tape in a robot)."""
    OFFLINE = "OFFLINE"
    """Retrievable only after manual intervention; still part of the study."""
    UNAVAILABLE = "UNAVAILABLE"
    """Cannot be retrieved (e.g. rejected or deleted): not expected."""


@dataclass(frozen=True, slots=True)
class AvailableInstance:
    """One Referenced SOP Sequence (0008,1199) item of a notice."""

    series_uid: str
    sop_instance_uid: str
    availability: Availability
    sop_class_uid: str = ""


@dataclass(frozen=True, slots=True)
class AvailabilityNotice:
    """One Instance Availability Notification (N-CREATE) for one study.

    Attributes:
        sop_instance_uid: The notification's SOP Instance UID.
        study_uid: Study Instance UID (0020,000D).
        instances: The instances it lists.
        step_uids: Referenced Performed Procedure Step Sequence (0008,1111) UIDs.
        calling_ae: Who sent it.
        received_at: When it arrived.
    """

    sop_instance_uid: str
    study_uid: str
    instances: tuple[AvailableInstance, ...]
    step_uids: tuple[str, ...] = ()
    calling_ae: str = ""
    received_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (for the ledger)."""
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "study_uid": self.study_uid,
            "instances": [
                [i.series_uid, i.sop_instance_uid, str(i.availability), i.sop_class_uid] for i in self.instances
            ],
            "step_uids": list(self.step_uids),
            "calling_ae": self.calling_ae,
            "received_at": self.received_at,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> AvailabilityNotice:
        """Read what ``to_json`` wrote."""
        instances = tuple(
            AvailableInstance(se, sop, Availability(av), cls_uid) for se, sop, av, cls_uid in raw["instances"]
        )
        return cls(
            raw["sop_instance_uid"],
            raw["study_uid"],
            instances,
            tuple(raw.get("step_uids", ())),
            raw.get("calling_ae", ""),
            float(raw.get("received_at", 0.0)),
        )


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def _instance(series_uid: str, item: Dataset, uid: str) -> AvailableInstance:
    """One Referenced SOP Sequence item (Type 1 UID and availability)."""
    sop = _text(item, "ReferencedSOPInstanceUID")
    if not sop:
        raise DimseRefused(
            "Referenced SOP Instance UID (0008,1155) is required in each item",
            uid,
            NStatus.MISSING_ATTRIBUTE_VALUE,
            (_SOP_UID,),
        )
    value = _text(item, "InstanceAvailability")
    try:
        availability = Availability(value)
    except ValueError:
        raise DimseRefused(
            f"Got {value!r} for Instance Availability (0008,0056); expected ONLINE, NEARLINE, OFFLINE or UNAVAILABLE",
            uid,
            NStatus.INVALID_ATTRIBUTE_VALUE,
            (_AVAILABILITY,),
        ) from None
    return AvailableInstance(series_uid, sop, availability, _text(item, "ReferencedSOPClassUID"))


def notice_from_n_create(ds: Dataset, sop_instance_uid: str, calling_ae: str, at: float) -> AvailabilityNotice:
    """Read an IAN N-CREATE Attribute List (PS3.3 C.4.23, PS3.4 R).

    Args:
        ds: The Attribute List.
        sop_instance_uid: Affected SOP Instance UID of the request.
        calling_ae: The requestor's AE title.
        at: When it arrived.

    Returns:
        The notice.

    Raises:
        DimseRefused: A Type 1 attribute is missing or empty, or an availability is undefined.
    """
    uid = str(sop_instance_uid or "").strip()
    study = _text(ds, "StudyInstanceUID")
    if not study:
        raise DimseRefused("Study Instance UID (0020,000D) is required", uid, NStatus.MISSING_ATTRIBUTE, (_STUDY_UID,))
    series_items = ds.get("ReferencedSeriesSequence") or []
    if not series_items:
        raise DimseRefused(
            "Referenced Series Sequence (0008,1115) is required", uid, NStatus.MISSING_ATTRIBUTE, (_SERIES_SEQ,)
        )
    instances = []
    for item in series_items:
        series_uid = _text(item, "SeriesInstanceUID")
        if not series_uid:
            raise DimseRefused(
                "Series Instance UID (0020,000E) is required in each series",
                uid,
                NStatus.MISSING_ATTRIBUTE_VALUE,
                (_SERIES_UID,),
            )
        instances += [_instance(series_uid, ref, uid) for ref in item.get("ReferencedSOPSequence") or []]
    steps = tuple(
        _text(i, "ReferencedSOPInstanceUID") for i in ds.get("ReferencedPerformedProcedureStepSequence") or []
    )
    return AvailabilityNotice(uid, study, tuple(instances), tuple(s for s in steps if s), calling_ae.strip(), at)


class NoticesState(enum.StrEnum):
    """What the notices of a study say about its completeness."""

    NONE = "none"
    """No notice lists a retrievable instance of the study: no verdict."""
    MISSING = "missing"
    """Instances the PACS says are available have not reached us."""
    COMPLETE = "complete"
    """We hold every instance the notices list as retrievable."""


@dataclass(frozen=True, slots=True)
class NoticesVerdict:
    """The verdict of a study's notices.

    Attributes:
        state: See ``NoticesState``.
        notices: How many notices name the study.
        expected: How many retrievable instances they list (after scope and own series).
        missing: Those we do not hold.
        missing_series: Their series.
    """

    state: NoticesState
    notices: int = 0
    expected: int = 0
    missing: frozenset[str] = frozenset()
    missing_series: tuple[str, ...] = ()


def judge_notices(
    notices: Iterable[AvailabilityNotice],
    study_uid: str,
    held: Set[str],
    received_series: Set[str],
    own_series: Set[str] = frozenset(),
    scope: str = "study",
) -> NoticesVerdict:
    """Judge a study on its Instance Availability Notifications.

    Args:
        notices: Notices (those of other studies are ignored), in any order.
        study_uid: The study.
        held: SOP Instance UIDs we hold in it.
        received_series: Series we hold instances of.
        own_series: Our own result series (SRs we stored into the study): not expected.
        scope: ``"series"``: only the series we received are expected (``count_scope``).

    Returns:
        The verdict.

    >>> n = AvailabilityNotice("9", "st", (AvailableInstance("se", "i1", Availability.ONLINE),
    ...                                    AvailableInstance("se", "i2", Availability.UNAVAILABLE)))
    >>> judge_notices([n], "st", {"i1"}, {"se"}).state
    <NoticesState.COMPLETE: 'complete'>
    """
    mine = sorted((n for n in notices if n.study_uid == study_uid), key=lambda n: n.received_at)
    latest = {i.sop_instance_uid: i for n in mine for i in n.instances}
    expected = {
        uid: i.series_uid
        for uid, i in latest.items()
        if i.availability is not Availability.UNAVAILABLE
        and i.series_uid not in own_series
        and (scope != "series" or i.series_uid in received_series)
    }
    if not expected:
        return NoticesVerdict(NoticesState.NONE, len(mine))
    missing = frozenset(set(expected) - held)
    series = tuple(dict.fromkeys(expected[u] for u in sorted(missing)))
    state = NoticesState.MISSING if missing else NoticesState.COMPLETE
    return NoticesVerdict(state, len(mine), len(expected), missing, series)
