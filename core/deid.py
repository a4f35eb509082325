"""De-identification for research export: PS3.15 Annex E on one data set, in memory.

The profile is the Basic Application Level Confidentiality Profile (PS3.15 E.2, Table E.1-1)
with three options:

- *Retain Longitudinal Temporal Information with Modified Dates* (E.3.6): every date and time
  attribute of the table moves by the patient's keyed offset (``core.deid_keys``) instead of
  being removed. The patient's birth date and time are not moved: they stay removed (Z/X).
- *Clean Descriptors* (E.3.5): the descriptions listed in ``CLEAN_DESCRIPTORS`` are kept with
  every word that also occurs in an identifying attribute of the same data set taken out, and
  every date-like or long number with them.
- *Retain UIDs*, as a keyed map: every UID the table marks U (and every other non-standard UID,
  so no instance UID is missed) becomes ``2.25.<HMAC(project key, UID)>``; references between
  instances, series and exports stay consistent, and only the key holder can recompute them.

The table itself (which attribute gets D, Z, X, U and the combined codes) comes from
``dicom-anonymizer`` (KitwareMedical), which generates it from the standard (release 2026c);
the choices made here are how the combined codes resolve (``_resolve``) and the options.
Private attributes, curves (50xx) and whole overlay groups (60xx) are removed.

Images that may show identifying text in their pixels (``burned_in_reason``) are excluded, or
masked where the caller names the regions to blank and the pixels are not compressed;
encapsulated documents and structured reports (free text in content items) are excluded.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache

from pydicom.config import IGNORE
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from core._deid_pixels import MaskRegion, burned_in_reason, mask_pixels
from core.deid_keys import DateShift, DeidKeys, shift_da, shift_da_tm, shift_dt, shift_tm

__all__ = [
    "Action",
    "CLEAN_DESCRIPTORS",
    "DeidResult",
    "Deidentifier",
    "ManifestRow",
    "MaskRegion",
    "burned_in_reason",
    "profile_actions",
]


class Action(enum.Enum):
    """What the profile, with its options, does to one attribute."""

    KEEP = "K"
    """Kept (nested sequences are still walked)."""
    DUMMY = "D"
    """Replaced by a non-identifying value of its VR."""
    EMPTY = "Z"
    """Kept with a zero-length value (Type 2 attributes stay present)."""
    REMOVE = "X"
    """Removed."""
    UID = "U"
    """Replaced by its keyed UID."""
    SHIFT = "C-date"
    """Moved by the patient's date offset (Retain Longitudinal ... Modified Dates)."""
    CLEAN = "C-desc"
    """Identifying words taken out (Clean Descriptors)."""


CLEAN_DESCRIPTORS = frozenset(
    {
        "StudyDescription",
        "SeriesDescription",
        "ImageComments",
        "ProtocolName",
        "AcquisitionComments",
        "AcquisitionDeviceProcessingDescription",
        "AcquisitionProtocolDescription",
        "DerivationDescription",
        "ContrastBolusAgent",
        "PerformedProcedureStepDescription",
        "RequestedProcedureDescription",
        "ScheduledProcedureStepDescription",
        "ReasonForTheRequestedProcedure",
        "ReasonForStudy",
        "CommentsOnThePerformedProcedureStep",
    }
)
"""Descriptions the Clean Descriptors option keeps cleaned (C) rather than removes (PS3.15 E.3.5)."""

_NOT_SHIFTED = frozenset({0x00100030, 0x00100032})
"""Patient's Birth Date and Time: removed as the Basic Profile says, never merely moved."""
_PATIENT_ID, _PATIENT_NAME, _CONTENT_SEQUENCE = 0x00100020, 0x00100010, 0x0040A730
_DATE_VRS = frozenset({"DA", "DT", "TM"})
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_KEPT_UIDS = frozenset(
    {0x00080016, 0x00081150, 0x00041510, 0x00080062, 0x0008001A, 0x0008010C, 0x00080117, 0x00080118, 0x0040DB0D}
)
"""UIDs of classes and definitions, not of anything that happened: SOP Class, Referenced SOP
Class (in File), SOP Classes in Study, Related General SOP Class, Coding Scheme, Context,
Mapping Resource, Template Extension Creator (is U in the table: handled there first)."""
_STANDARD_UID = "1.2.840.10008."
_DEID_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113105", "Clean Descriptors Option"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)
"""CID 7050 codes of what was applied (DCM scheme), written to the De-identification Method
Code Sequence. Not 113110 (Retain UIDs): the UIDs are replaced, by a keyed map."""
_METHOD = "PS3.15 E Basic; Modified Dates; Clean Descriptors; keyed UIDs"
"""De-identification Method (LO: at most 64 characters)."""
_DUMMY_TEXT = "REMOVED"
_WORD = re.compile(r"[A-Za-z0-9]+")
_DATE_LIKE = re.compile(r"\b\d{1,4}[-./]\d{1,2}[-./]\d{1,4}\b|\d{5,}")


@cache
def profile_actions() -> dict[int, Action]:
    """Table E.1-1 with the options applied, by tag (masked rows are in ``_masked_rows``)."""
    from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table
    from pydicom.datadict import dictionary_VR, keyword_for_tag

    out: dict[int, Action] = {}
    for name in ("D", "Z", "X", "U", "Z_D", "X_Z", "X_D", "X_Z_D", "X_Z_U_STAR"):
        for row in getattr(table, f"{name}_TAGS"):
            if len(row) != 2:
                continue
            tag = (row[0] << 16) | row[1]
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = "UN"
            out[tag] = _with_options(tag, _resolve(name, vr), vr, keyword_for_tag(tag))
    return out


def _resolve(code: str, vr: str) -> Action:
    """One action for a table code; a combined code takes the choice that keeps IODs valid:
    Z where emptying is allowed (X/Z, X/Z/D, Z/D), X for X/D, and the items of X/Z/U*
    sequences walked (their UIDs are mapped, the rest follows the table)."""
    if code in ("X_Z_U_STAR",) or (code in ("D", "X_D") and vr == "SQ"):
        return Action.KEEP
    if code in ("Z", "X_Z", "X_Z_D", "Z_D"):
        return Action.EMPTY
    return {"D": Action.DUMMY, "X": Action.REMOVE, "U": Action.UID, "X_D": Action.REMOVE}[code]


def _with_options(tag: int, basic: Action, vr: str, keyword: str) -> Action:
    """Apply the options: dates move, descriptors are cleaned, patient ID/name get pseudonyms."""
    if tag in (_PATIENT_ID, _PATIENT_NAME):
        return Action.DUMMY
    if tag == _CONTENT_SEQUENCE:
        return Action.REMOVE  # X without Clean Structured Content (reports are excluded anyway)
    if vr in _DATE_VRS and tag not in _NOT_SHIFTED and basic is not Action.KEEP:
        return Action.SHIFT
    if keyword in CLEAN_DESCRIPTORS:
        return Action.CLEAN
    if vr == "UI" and basic is not Action.REMOVE:
        return Action.UID
    return basic


def _masked_row(tag: int) -> bool:
    """Private attributes, curves (50xx) and overlays (60xx: data and comments are X; the rest
    of a plane is useless without them, and the Overlay module is optional)."""
    group = tag >> 16
    return bool(group & 1) or (group & 0xFF00) in (0x5000, 0x6000)


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One instance in the export manifest: pseudonyms and non-identifying facts only."""

    patient: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    study_date: str
    excluded: bool
    reason: str
    """Why the instance was excluded, or that it was masked; empty otherwise."""


@dataclass(frozen=True, slots=True)
class DeidResult:
    """The de-identified copy (``None`` when excluded) and its manifest row."""

    dataset: Dataset | None
    row: ManifestRow


@dataclass(slots=True)
class _Walk:
    """What one data set's walk needs: the keys, the patient's offset, the words to clean."""

    keys: DeidKeys
    shift: DateShift
    patient: str
    words: frozenset[str] = field(default_factory=frozenset)


class Deidentifier:
    """Applies the profile to data sets of one project (``DeidKeys``)."""

    def __init__(self, keys: DeidKeys, mask_regions: Sequence[MaskRegion] = ()) -> None:
        """Args:
        keys: The project's keyed derivations.
        mask_regions: Rectangles to blank in images with burned-in annotation; empty: such
            images are excluded.
        """
        self._keys = keys
        self._regions = tuple(mask_regions)

    def apply(self, source: Dataset) -> DeidResult:
        """De-identify a copy of ``source`` (never changed), or exclude it with its reason."""
        pid = str(source.get("PatientID", "") or "") or f"name:{source.get('PatientName', '') or ''}"
        walk = _Walk(self._keys, self._keys.date_shift(pid), self._keys.pseudonym("patient", pid))
        walk.words = frozenset(_identifying_words(source))
        ds = _copy_with_meta(source)
        reason = burned_in_reason(ds)
        if reason and self._regions:
            reason = mask_pixels(ds, self._regions, reason)
        excluded = bool(reason) and not reason.startswith("masked")
        if not excluded:
            _clean(ds, walk)
            _mark(ds, walk)
        return DeidResult(None if excluded else ds, self._row(source, walk, excluded, reason or ""))

    def _row(self, source: Dataset, walk: _Walk, excluded: bool, reason: str) -> ManifestRow:
        """The manifest row: keyed UIDs, the moved study date, nothing read back from the copy."""

        def uid(keyword: str) -> str:
            value = str(source.get(keyword, "") or "")
            return self._keys.uid(value) if value else ""

        day, time = str(source.get("StudyDate", "") or ""), str(source.get("StudyTime", "") or "")
        pair = shift_da_tm(day, time, walk.shift) if time else None
        date = pair[0] if pair else shift_da(day, walk.shift) or ""  # as _shift_pairs moved it
        return ManifestRow(
            walk.patient,
            uid("StudyInstanceUID"),
            uid("SeriesInstanceUID"),
            uid("SOPInstanceUID"),
            str(source.get("SOPClassUID", "")),
            str(source.get("Modality", "")),
            date,
            excluded,
            reason,
        )


def _copy(source: Dataset) -> Dataset:
    """A deep enough copy to change freely (pixel bytes are shared until masked)."""
    ds = Dataset()
    for elem in source:
        ds.add(_copy_element(elem))
    return ds


def _copy_with_meta(source: Dataset) -> Dataset:
    """``_copy`` with a copy of the file meta (made up when the source was read without one)."""
    ds = _copy(source)
    meta = getattr(source, "file_meta", None)
    copied = FileMetaDataset()
    for elem in meta or []:
        copied.add(_copy_element(elem))
    if "TransferSyntaxUID" not in copied:  # read without file meta: as pydicom read it
        implicit, little = getattr(source, "original_encoding", (None, None))
        copied.TransferSyntaxUID = ImplicitVRLittleEndian if implicit in (True, None) else ExplicitVRLittleEndian
        if little is False:
            copied.TransferSyntaxUID = ExplicitVRBigEndian
    if "MediaStorageSOPClassUID" not in copied and "SOPClassUID" in source:
        copied.MediaStorageSOPClassUID = source.SOPClassUID
    ds.file_meta = copied
    return ds


def _copy_element(elem: DataElement) -> DataElement:
    if elem.VR == "SQ":
        return DataElement(elem.tag, "SQ", DicomSequence([_copy(item) for item in elem.value]))
    value = list(elem.value) if elem.VM > 1 and not isinstance(elem.value, bytes | str) else elem.value
    return DataElement(elem.tag, elem.VR, value, validation_mode=IGNORE)  # as received, checked elsewhere


def _elements(ds: Dataset) -> Iterator[DataElement]:
    """Every element of ``ds`` and of its nested items, depth first."""
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _elements(item)


def _identifying_words(ds: Dataset) -> Iterator[str]:
    """Words (3+ characters) of every attribute the profile does not keep as it is."""
    table = profile_actions()
    for elem in _elements(ds):
        tag = int(elem.tag)
        action = Action.REMOVE if _masked_row(tag) else table.get(tag, Action.KEEP)
        if action in (Action.KEEP, Action.CLEAN) or elem.VR in _BINARY_VRS or elem.VR == "SQ":
            continue
        for value in _texts(elem):
            yield from (w.upper() for w in _WORD.findall(value) if len(w) >= 3)


def _texts(elem: DataElement) -> list[str]:
    """The element's values as text (one per value; empty for no value)."""
    if elem.value is None or elem.value == "":
        return []
    values = elem.value if elem.VM > 1 and not isinstance(elem.value, str | bytes) else [elem.value]
    return [str(v) for v in values]


def _clean(ds: Dataset, walk: _Walk) -> None:
    """Apply the profile to ``ds`` and its nested items, in place."""
    table = profile_actions()
    done = _shift_pairs(ds, walk, table)
    for elem in list(ds):
        tag = int(elem.tag)
        if tag in done:
            continue
        if _masked_row(tag):
            del ds[elem.tag]
            continue
        action = table.get(tag, Action.KEEP)
        if action is Action.KEEP and elem.VR == "UI" and tag not in _KEPT_UIDS:
            _map_uids(elem, walk.keys, keep_standard=True)  # a UID the table does not list (newer, retired)
            continue
        _apply(ds, elem, action, walk)


def _apply(ds: Dataset, elem: DataElement, action: Action, walk: _Walk) -> None:
    """Carry out one attribute's action."""
    if action is Action.KEEP:
        if elem.VR == "SQ":
            for item in elem.value:
                _clean(item, walk)
    elif action is Action.REMOVE or (action is Action.DUMMY and elem.VR in _BINARY_VRS):
        del ds[elem.tag]
    elif action is Action.EMPTY:
        elem.value = _empty(elem.VR)
    elif action is Action.UID:
        _map_uids(elem, walk.keys)
    elif action is Action.SHIFT:
        _shift(elem, walk.shift)
    elif action is Action.CLEAN:
        elem.value = _clean_text(elem, walk.words)
    else:
        elem.value = _dummy(elem, walk)


def _empty(vr: str) -> object:
    """A zero-length value of the VR (text VRs read back as ``""``)."""
    if vr == "SQ":
        return DicomSequence([])
    return "" if vr in _TEXT_VRS else None


def _map_uids(elem: DataElement, keys: DeidKeys, keep_standard: bool = False) -> None:
    """Replace each UID value by its keyed UID; with ``keep_standard`` (attributes the table does
    not list) UIDs under the DICOM root ``1.2.840.10008.`` are kept: they name classes, not events."""
    mapped = [v if not v or (keep_standard and v.startswith(_STANDARD_UID)) else keys.uid(v) for v in _texts(elem)]
    elem.value = mapped if len(mapped) > 1 else (mapped[0] if mapped else None)


def _shift(elem: DataElement, shift: DateShift) -> None:
    """Move a DA, DT or TM value; a value that does not parse is emptied, never kept."""
    move = {"DA": shift_da, "DT": shift_dt, "TM": shift_tm}.get(elem.VR)
    if move is None:
        elem.value = _empty(elem.VR)
        return
    moved = [move(v, shift) for v in _texts(elem)]
    if any(m is None for m in moved) or not moved:
        elem.value = ""
    else:
        elem.value = moved if len(moved) > 1 else moved[0]


def _shift_pairs(ds: Dataset, walk: _Walk, table: dict[int, Action]) -> set[int]:
    """Move each date with its time as one instant (``StudyDate``/``StudyTime``); return the
    tags done. The pair is found by keyword: ``...Date...`` and the same with ``Time``."""
    done: set[int] = set()
    for elem in ds:
        kw = elem.keyword
        if elem.VR != "DA" or table.get(int(elem.tag)) is not Action.SHIFT or kw.count("Date") != 1:
            continue
        partner = ds.data_element(kw.replace("Date", "Time")) if kw.replace("Date", "Time") in ds else None
        if partner is None or partner.VR != "TM" or elem.VM != 1 or partner.VM != 1:
            continue
        moved = shift_da_tm(str(elem.value), str(partner.value), walk.shift)
        if moved is None:
            continue
        elem.value, partner.value = moved
        done |= {int(elem.tag), int(partner.tag)}
    return done


def _clean_text(elem: DataElement, words: frozenset[str]) -> str | None:
    """The text without identifying words, dates or long numbers; ``None`` when nothing is left."""
    kept = []
    for value in _texts(elem):
        text = _DATE_LIKE.sub(" ", value)
        text = _WORD.sub(lambda m: "" if m[0].upper() in words else m[0], text)
        kept.append(" ".join(text.split()))
    joined = "\\".join(kept)
    return joined if joined.strip("\\") else None


def _dummy(elem: DataElement, walk: _Walk) -> object:
    """A non-identifying value of the element's VR (the patient's pseudonym for ID and name)."""
    if int(elem.tag) in (_PATIENT_ID, _PATIENT_NAME):
        return walk.patient
    if elem.VR in ("IS", "DS"):
        return "0"
    if elem.VR in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"):
        return 0
    if elem.VR in _DATE_VRS or elem.VR == "AS":
        return ""
    return _DUMMY_TEXT


def _mark(ds: Dataset, walk: _Walk) -> None:
    """Record what was done (PS3.3 C.7.1.1: Patient Identity Removed, De-identification Method),
    point the file meta at the new SOP Instance UID and drop what it named about the sender."""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = _METHOD
    codes = []
    for value, meaning in _DEID_CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = DicomSequence(codes)
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    for tag in [t for t in meta.keys() if int(t) not in (0x00020001, 0x00020002, 0x00020003, 0x00020010)]:
        del meta[tag]  # the sender's AE title, implementation and private information
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "")
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID  # we write the file (the sender's UID could name it)
    if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian  # written plain, so what it holds can be checked
