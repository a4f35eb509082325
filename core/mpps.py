"""Modality Performed Procedure Step (MPPS): what the modality says it performed.

The bridge is an MPPS SCP (Modality Performed Procedure Step SOP Class, PS3.4 Annex F; IHE RAD
TF-2 RAD-6 / RAD-7 "Modality Procedure Step In Progress / Completed"). The modality N-CREATEs a
step ``IN PROGRESS`` when it starts, and N-SETs it ``COMPLETED`` (or ``DISCONTINUED``) with the
Performed Series Sequence listing every instance it made. That list is the strongest evidence
of a complete study: complete when we hold every instance it lists.

The rules of PS3.4 F.7.2, as ``create_step`` and ``set_step`` apply them (each refusal is a
``DimseRefused`` carrying the status to answer):

- N-CREATE: Performed Procedure Step Status (0040,0252) must be ``IN PROGRESS``, else 0106H
  Invalid Attribute Value (F.7.2.1.3); an existing SOP Instance UID is 0111H Duplicate SOP
  Instance; the Scheduled Step Attribute Sequence (0040,0270) and its Study Instance UIDs are
  Type 1 (0120H / 0121H).
- N-SET: only while the step is ``IN PROGRESS``; a ``COMPLETED`` or ``DISCONTINUED`` step can
  never change again: 0110H Processing Failure, Error Comment "Performed Procedure Step Object
  may no longer be updated", Error ID A710H (F.7.2.2.3, Table F.7.2-2). An unknown step is 0112H
  No Such SOP Instance. Attributes "Not allowed" in N-SET (Table F.7.2-1) are ignored when
  they repeat the stored value and refused (0106H) when they would change which study the step
  belongs to. A sequence in an N-SET replaces the stored one whole (PS3.7 10.1.3). At the final
  state the Performed Series Sequence must have an item (Table F.7.2-1, Final State 1): 0120H.

A step may name several studies (the group case, IHE RAD TF-1 4.3); its instances are expected
across them, so ``judge_steps`` takes what we hold in every study the step names. Patient
identity in the step (PHI) is not kept: the records hold UIDs, codes and AE titles only.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, replace
from typing import Any

from pydicom.dataset import Dataset

from core.errors import DimseRefused

__all__ = [
    "MAY_NO_LONGER_BE_UPDATED",
    "MPPS_SOP_CLASS_UID",
    "NStatus",
    "PerformedSeries",
    "ProcedureStep",
    "StepStatus",
    "StepsState",
    "StepsVerdict",
    "create_step",
    "judge_steps",
    "set_step",
]

MPPS_SOP_CLASS_UID = "1.2.840.10008.3.1.2.3.3"
"""Modality Performed Procedure Step SOP Class (PS3.4 F.7.3)."""
MAY_NO_LONGER_BE_UPDATED = 0xA710
"""Error ID of "Performed Procedure Step Object may no longer be updated" (Table F.7.2-2)."""

_STATUS = 0x00400252
_SSAS = 0x00400270
_STUDY_UID = 0x0020000D
_PSS = 0x00400340
_SERIES_UID = 0x0020000E
_SOP_UID = 0x00081155
_AFFECTED_SOP = 0x00001000


class NStatus(enum.IntEnum):
    """DIMSE-N status codes the MPPS and IAN SCPs answer (PS3.7 C.5, PS3.4 F.7.2.2.4)."""

    SUCCESS = 0x0000
    """The request was performed."""
    INVALID_ATTRIBUTE_VALUE = 0x0106
    """A value is not allowed (N-CREATE status other than IN PROGRESS; a change of study)."""
    PROCESSING_FAILURE = 0x0110
    """With Error ID A710H: the step is final and may no longer be updated."""
    DUPLICATE_SOP_INSTANCE = 0x0111
    """N-CREATE of a SOP Instance UID that exists."""
    NO_SUCH_SOP_INSTANCE = 0x0112
    """N-SET of a SOP Instance UID we never saw created."""
    MISSING_ATTRIBUTE = 0x0120
    """A Type 1 attribute is absent (or a final-state requirement is not met)."""
    MISSING_ATTRIBUTE_VALUE = 0x0121
    """A Type 1 attribute is present but empty."""


class StepStatus(enum.StrEnum):
    """Performed Procedure Step Status (0040,0252), PS3.3 C.4.14."""

    IN_PROGRESS = "IN PROGRESS"
    """Started, not finished; the only status an N-CREATE may carry."""
    COMPLETED = "COMPLETED"
    """Finished: the Performed Series Sequence lists what was made."""
    DISCONTINUED = "DISCONTINUED"
    """Stopped before it was finished; what was made may be listed."""

    @property
    def is_final(self) -> bool:
        """Whether the step may no longer be updated (PS3.4 F.7.2.2.3)."""
        return self is not StepStatus.IN_PROGRESS


@dataclass(frozen=True, slots=True)
class PerformedSeries:
    """One item of the Performed Series Sequence (0040,0340).

    Attributes:
        series_uid: Series Instance UID.
        sop_instance_uids: Referenced Image Sequence (0008,1140) and Referenced Non-Image
            Composite SOP Instance Sequence (0040,0220): every instance the step made in it.
        retrieve_ae: Retrieve AE Title (0008,0054), if given.
    """

    series_uid: str
    sop_instance_uids: tuple[str, ...] = ()
    retrieve_ae: str = ""


@dataclass(frozen=True, slots=True)
class ProcedureStep:
    """The state of one MPPS SOP Instance, as N-CREATE and N-SETs left it.

    Attributes:
        sop_instance_uid: The MPPS SOP Instance UID.
        status: Performed Procedure Step Status.
        study_uids: Study Instance UIDs of the Scheduled Step Attribute Sequence, in order.
        series: Performed Series Sequence.
        calling_ae: Who sent the N-CREATE.
        modality: Modality (0008,0060).
        station_ae: Performed Station AE Title (0040,0241).
        discontinued_reason: Discontinuation reason code (0040,0281), ``value (meaning)``.
        created_at: When the N-CREATE arrived.
        updated_at: When the latest accepted request arrived.
    """

    sop_instance_uid: str
    status: StepStatus
    study_uids: tuple[str, ...]
    series: tuple[PerformedSeries, ...] = ()
    calling_ae: str = ""
    modality: str = ""
    station_ae: str = ""
    discontinued_reason: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def expected(self) -> frozenset[str]:
        """Every SOP Instance UID the step lists."""
        return frozenset(u for s in self.series for u in s.sop_instance_uids)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (for the ledger; no patient identity in it)."""
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "status": str(self.status),
            "study_uids": list(self.study_uids),
            "calling_ae": self.calling_ae,
            "series": [
                {
                    "series_uid": s.series_uid,
                    "sop_instance_uids": list(s.sop_instance_uids),
                    "retrieve_ae": s.retrieve_ae,
                }
                for s in self.series
            ],
            "modality": self.modality,
            "station_ae": self.station_ae,
            "discontinued_reason": self.discontinued_reason,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ProcedureStep:
        """Read what ``to_json`` wrote."""
        series = tuple(
            PerformedSeries(s["series_uid"], tuple(s["sop_instance_uids"]), s.get("retrieve_ae", ""))
            for s in raw.get("series", ())
        )
        return cls(
            raw["sop_instance_uid"],
            StepStatus(raw["status"]),
            tuple(raw["study_uids"]),
            series,
            raw.get("calling_ae", ""),
            raw.get("modality", ""),
            raw.get("station_ae", ""),
            raw.get("discontinued_reason", ""),
            float(raw.get("created_at", 0.0)),
            float(raw.get("updated_at", 0.0)),
        )


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def _status(ds: Dataset, uid: str) -> StepStatus | None:
    """Performed Procedure Step Status, if present (0106H when the value is not defined)."""
    if "PerformedProcedureStepStatus" not in ds:
        return None
    value = _text(ds, "PerformedProcedureStepStatus")
    try:
        return StepStatus(value)
    except ValueError:
        raise DimseRefused(
            f"Got {value!r} for (0040,0252); expected IN PROGRESS, COMPLETED or DISCONTINUED",
            uid,
            NStatus.INVALID_ATTRIBUTE_VALUE,
            (_STATUS,),
        ) from None


def _study_uids(ds: Dataset, uid: str) -> tuple[str, ...]:
    """Study Instance UIDs of the Scheduled Step Attribute Sequence (Type 1, F.7.2-1)."""
    items = ds.get("ScheduledStepAttributesSequence") or []
    if not items:
        raise DimseRefused(
            "Scheduled Step Attribute Sequence (0040,0270) is required", uid, NStatus.MISSING_ATTRIBUTE, (_SSAS,)
        )
    studies = [_text(item, "StudyInstanceUID") for item in items]
    if not all(studies):
        raise DimseRefused(
            "Study Instance UID (0020,000D) is required in every scheduled step",
            uid,
            NStatus.MISSING_ATTRIBUTE_VALUE,
            (_STUDY_UID,),
        )
    return tuple(dict.fromkeys(studies))


def _series(ds: Dataset, uid: str) -> tuple[PerformedSeries, ...]:
    """The Performed Series Sequence with the instances each item references."""
    out = []
    for item in ds.get("PerformedSeriesSequence") or []:
        series_uid = _text(item, "SeriesInstanceUID")
        if not series_uid:
            raise DimseRefused(
                "Series Instance UID (0020,000E) is required in each performed series",
                uid,
                NStatus.MISSING_ATTRIBUTE_VALUE,
                (_SERIES_UID,),
            )
        refs = [
            *(item.get("ReferencedImageSequence") or []),
            *(item.get("ReferencedNonImageCompositeSOPInstanceSequence") or []),
        ]
        sops = [_text(ref, "ReferencedSOPInstanceUID") for ref in refs]
        if not all(sops):
            raise DimseRefused(
                "Referenced SOP Instance UID (0008,1155) is required in each reference",
                uid,
                NStatus.MISSING_ATTRIBUTE_VALUE,
                (_SOP_UID,),
            )
        out.append(PerformedSeries(series_uid, tuple(dict.fromkeys(sops)), _text(item, "RetrieveAETitle")))
    return tuple(out)


def _reason(ds: Dataset) -> str:
    """Discontinuation reason (0040,0281) as ``value (meaning)``; empty if not given."""
    items = ds.get("PerformedProcedureStepDiscontinuationReasonCodeSequence") or []
    if not items:
        return ""
    return f"{_text(items[0], 'CodeValue')} ({_text(items[0], 'CodeMeaning')})"


def create_step(
    ds: Dataset,
    sop_instance_uid: str,
    calling_ae: str,
    at: float,
    existing: ProcedureStep | None = None,
) -> ProcedureStep:
    """Apply an N-CREATE (PS3.4 F.7.2.1).

    Args:
        ds: The N-CREATE Attribute List.
        sop_instance_uid: Affected SOP Instance UID (0000,1000) of the request.
        calling_ae: The requestor's AE title.
        at: When the request arrived.
        existing: The step already stored under that UID, if any.

    Returns:
        The new step, ``IN PROGRESS``.

    Raises:
        DimseRefused: The request breaks F.7.2.1 (see the module docstring).
    """
    uid = str(sop_instance_uid or "").strip()
    if not uid:
        raise DimseRefused(
            "Affected SOP Instance UID (0000,1000) is required", "", NStatus.MISSING_ATTRIBUTE_VALUE, (_AFFECTED_SOP,)
        )
    if existing is not None:
        raise DimseRefused("Duplicate SOP Instance: the step exists", uid, NStatus.DUPLICATE_SOP_INSTANCE)
    status = _status(ds, uid)
    if status is None:
        raise DimseRefused(
            "Performed Procedure Step Status (0040,0252) is required", uid, NStatus.MISSING_ATTRIBUTE, (_STATUS,)
        )
    if status is not StepStatus.IN_PROGRESS:
        raise DimseRefused(
            f"Got {str(status)!r} for (0040,0252) in N-CREATE; expected IN PROGRESS",
            uid,
            NStatus.INVALID_ATTRIBUTE_VALUE,
            (_STATUS,),
        )
    return ProcedureStep(
        uid,
        status,
        _study_uids(ds, uid),
        _series(ds, uid),
        calling_ae.strip(),
        _text(ds, "Modality"),
        _text(ds, "PerformedStationAETitle"),
        _reason(ds),
        at,
        at,
    )


def set_step(step: ProcedureStep | None, ds: Dataset, sop_instance_uid: str, at: float) -> ProcedureStep:
    """Apply an N-SET (PS3.4 F.7.2.2) to the stored step.

    Args:
        step: The stored step (``None``: never created).
        ds: The N-SET Modification List.
        sop_instance_uid: Requested SOP Instance UID (0000,1001) of the request.
        at: When the request arrived.

    Returns:
        The step after the N-SET.

    Raises:
        DimseRefused: The request breaks F.7.2.2 (see the module docstring).
    """
    uid = str(sop_instance_uid or "").strip()
    if step is None:
        raise DimseRefused("No Such SOP Instance: no step was created with this UID", uid, NStatus.NO_SUCH_SOP_INSTANCE)
    if step.status.is_final:
        raise DimseRefused(
            "Performed Procedure Step Object may no longer be updated",
            uid,
            NStatus.PROCESSING_FAILURE,
            (),
            MAY_NO_LONGER_BE_UPDATED,
        )
    status = _status(ds, uid) or step.status
    if "ScheduledStepAttributesSequence" in ds and _study_uids(ds, uid) != step.study_uids:
        raise DimseRefused(
            "Scheduled Step Attribute Sequence may not change in N-SET (Table F.7.2-1)",
            uid,
            NStatus.INVALID_ATTRIBUTE_VALUE,
            (_SSAS,),
        )
    series = _series(ds, uid) if "PerformedSeriesSequence" in ds else step.series
    if status.is_final and not series:
        raise DimseRefused(
            f"Performed Series Sequence (0040,0340) needs an item to set {status}",
            uid,
            NStatus.MISSING_ATTRIBUTE,
            (_PSS,),
        )
    reason = (
        _reason(ds) if "PerformedProcedureStepDiscontinuationReasonCodeSequence" in ds else step.discontinued_reason
    )
    return replace(step, status=status, series=series, discontinued_reason=reason, updated_at=at)


class StepsState(enum.StrEnum):
    """What the procedure steps naming a study say about its completeness."""

    NONE = "none"
    """No step names the study, or the final steps list no instances: no verdict."""
    IN_PROGRESS = "in_progress"
    """A step naming the study is still in progress: more is coming."""
    MISSING = "missing"
    """Every step is final, but instances they list have not arrived."""
    COMPLETE = "complete"
    """Every step is final and we hold every instance they list."""


@dataclass(frozen=True, slots=True)
class StepsVerdict:
    """The verdict of the procedure steps naming one study.

    Attributes:
        state: See ``StepsState``.
        steps: How many steps name the study.
        expected: How many instances they list.
        missing: Listed SOP Instance UIDs we do not hold.
        missing_series: Series of the missing instances.
        discontinued: A step naming the study was discontinued (the result is partial).
    """

    state: StepsState
    steps: int = 0
    expected: int = 0
    missing: frozenset[str] = frozenset()
    missing_series: tuple[str, ...] = ()
    discontinued: bool = False


def judge_steps(
    steps: Iterable[ProcedureStep], study_uid: str, held: Set[str], series_scope: Set[str] | None = None
) -> StepsVerdict:
    """Judge a study on the procedure steps that name it.

    Args:
        steps: Procedure steps (those not naming ``study_uid`` are ignored).
        study_uid: The study.
        held: SOP Instance UIDs we hold, in every study the steps name.
        series_scope: Only these series are expected (``count_scope: series``: a PACS rule
            that forwards part of a study); ``None``: every performed series.

    Returns:
        The verdict.

    >>> done = ProcedureStep("9.1", StepStatus.COMPLETED, ("st",), (PerformedSeries("se", ("i1", "i2")),))
    >>> judge_steps([done], "st", {"i1"}).state, judge_steps([done], "st", {"i1", "i2"}).state
    (<StepsState.MISSING: 'missing'>, <StepsState.COMPLETE: 'complete'>)
    """
    mine = [s for s in steps if study_uid in s.study_uids]
    discontinued = any(s.status is StepStatus.DISCONTINUED for s in mine)
    if any(s.status is StepStatus.IN_PROGRESS for s in mine):
        return StepsVerdict(StepsState.IN_PROGRESS, len(mine))
    performed = [se for s in mine for se in s.series if series_scope is None or se.series_uid in series_scope]
    expected = frozenset(u for se in performed for u in se.sop_instance_uids)
    if not expected:
        return StepsVerdict(StepsState.NONE, len(mine), discontinued=discontinued)
    missing = frozenset(expected - held)
    series = tuple(dict.fromkeys(se.series_uid for se in performed if set(se.sop_instance_uids) & missing))
    state = StepsState.MISSING if missing else StepsState.COMPLETE
    return StepsVerdict(state, len(mine), len(expected), missing, series, discontinued)
