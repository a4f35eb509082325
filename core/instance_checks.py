"""Instance checks of the attributes every received instance needs (``core.validation``).

Each check takes ``(attributes, transfer syntax, expected SOP Instance UID)`` and returns the
problems it finds: a file cut short, Per-Frame Functional Groups that do not match Number of
Frames, a transfer syntax that is not one (PS3.6 Table A-1) or not the one File Meta declares,
UIDs (PS3.5 9.1), Modality (CS), Patient ID (LO, VM 1), and the File Meta / C-STORE request
agreeing with the data set. Messages name the attribute and tag, never patient values.
"""

from __future__ import annotations

import functools
import re

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.uid import UID

from core._elements import Attributes, describe
from core.reasons import Problem, ReasonCode

__all__ = [
    "NON_PATIENT_SOP_CLASSES",
    "check_complete",
    "check_functional_groups",
    "check_identity",
    "check_meta",
    "check_transfer_syntax",
]

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_CS = re.compile(r"^[A-Z0-9 _]{1,16}$")
_SOP_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
_MULTIBYTE_CHARSETS = ("ISO_IR 192", "ISO 2022", "GB18030", "GBK")
NON_PATIENT_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.38.1",
        "1.2.840.10008.5.1.4.39.1",
        "1.2.840.10008.5.1.4.43.1",
        "1.2.840.10008.5.1.4.44.1",
        "1.2.840.10008.5.1.4.45.1",
        "1.2.840.10008.5.1.4.1.1.200.1",
        "1.2.840.10008.5.1.4.1.1.200.3",
        "1.2.840.10008.5.1.4.1.1.200.7",
        "1.2.840.10008.5.1.4.1.1.201.1",
    }
)
"""Non-Patient Object Storage (PS3.4 Annex GG): hanging protocols, color palettes, implant
templates, protocols, inventories. They have no patient, study or series."""


def check_complete(attrs: Attributes, _ts: str, _sop: str) -> list[Problem]:
    """A file cut short leaves its last element with fewer bytes than its length says (pydicom
    reads what is there). Only the last top-level element can be cut, so only it is looked at."""
    tags = attrs.ds.keys()
    if not tags:
        return []
    last = attrs.ds.get_item(next(reversed(tags)), keep_deferred=True)
    if not isinstance(last, RawDataElement) or last.length == 0xFFFFFFFF or last.value is None:
        return []
    if len(last.value) < last.length:
        tag = int(last.tag)
        name = f"{keyword_for_tag(tag)} ".lstrip() + f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        return [
            Problem(
                ReasonCode.TRUNCATED,
                f"{name}: got {len(last.value)} bytes; its length says {last.length} "
                "(the data set ends inside this element)",
            )
        ]
    return []


def check_functional_groups(attrs: Attributes, _ts: str, _sop: str) -> list[Problem]:
    """Enhanced multi-frame images describe each frame in one Per-Frame Functional Groups item
    (PS3.3 C.7.6.16): as many items as Number of Frames."""
    if 0x52009230 not in attrs.ds:
        return []
    frames = attrs.integer("NumberOfFrames")
    items = len(attrs.ds.PerFrameFunctionalGroupsSequence)
    if frames is None and not attrs.present("NumberOfFrames"):
        return [
            Problem(
                ReasonCode.MISSING_ATTRIBUTE,
                f"NumberOfFrames (0028,0008): missing; expected {items} (Type 1 for a "
                "multi-frame image with Per-Frame Functional Groups)",
            )
        ]
    if frames is not None and items != frames:
        return [
            Problem(
                ReasonCode.FRAME_COUNT_MISMATCH,
                f"PerFrameFunctionalGroupsSequence (5200,9230): got {items} items; "
                f"NumberOfFrames (0028,0008) says {frames}",
            )
        ]
    return []


def check_transfer_syntax(attrs: Attributes, ts: str, _sop: str) -> list[Problem]:
    return list(_syntax_problems(attrs.meta_text("TransferSyntaxUID"), ts))


@functools.lru_cache(maxsize=256)
def _syntax_problems(declared: str, ts: str) -> tuple[Problem, ...]:
    """Problems of a (declared, received) transfer syntax pair; a handful of pairs recur."""
    where = "TransferSyntaxUID (0002,0010)"
    problems = []
    if ts and declared and ts != declared:
        problems.append(
            Problem(ReasonCode.META_MISMATCH, f"{where}: File Meta says {declared[:70]!r}; it was received as {ts!r}")
        )
    value = ts or declared
    if not value:
        return tuple(problems)
    if len(value) > 64 or not _UID.match(value):
        problems.append(Problem(ReasonCode.INVALID_UID, f"{where}: got {value[:70]!r}; expected PS3.5 9.1 UID syntax"))
    elif not UID(value).is_transfer_syntax:
        problems.append(
            Problem(
                ReasonCode.UNSUPPORTED_TRANSFER_SYNTAX,
                f"{where}: got {value!r}; expected a transfer syntax of PS3.6 "
                "Table A-1 (unknown or private syntaxes cannot be decoded)",
            )
        )
    return tuple(problems)


def _check_uid(attrs: Attributes, keyword: str) -> list[Problem]:
    value = attrs.text(keyword)
    if not value:
        if attrs.present(keyword):
            return []  # present but unreadable as its VR: already flagged
        return [Problem(ReasonCode.MISSING_ATTRIBUTE, f"{describe(keyword)}: missing; expected a UID")]
    if len(value) > 64 or not _UID.match(value):
        return [
            Problem(
                ReasonCode.INVALID_UID,
                f"{describe(keyword)}: got {value[:70]!r}; expected PS3.5 9.1 UID syntax "
                "(digits and dots, no leading zeros, at most 64 characters)",
            )
        ]
    return []


def check_identity(attrs: Attributes, _ts: str, _sop: str) -> list[Problem]:
    if attrs.text("SOPClassUID") in NON_PATIENT_SOP_CLASSES:
        return _check_uid(attrs, "SOPClassUID") + _check_uid(attrs, "SOPInstanceUID")
    problems = [p for kw in _SOP_UIDS for p in _check_uid(attrs, kw)]
    uids = {kw: attrs.text(kw) for kw in _SOP_UIDS[:3]}
    if len({u for u in uids.values() if u}) < len([u for u in uids.values() if u]):
        problems.append(
            Problem(
                ReasonCode.INVALID_VALUE,
                "StudyInstanceUID / SeriesInstanceUID / SOPInstanceUID: two of them "
                "are equal; expected three distinct UIDs",
            )
        )
    return problems + _check_modality(attrs) + _check_patient_id(attrs)


def _check_modality(attrs: Attributes) -> list[Problem]:
    value = attrs.text("Modality")
    if not value:
        return (
            []
            if attrs.present("Modality")
            else [Problem(ReasonCode.MISSING_ATTRIBUTE, f"{describe('Modality')}: missing; expected a CS value")]
        )
    if not _CS.match(value):
        return [
            Problem(
                ReasonCode.INVALID_VR,
                f"{describe('Modality')}: got {value[:20]!r}; expected a CS value "
                "(at most 16 of A-Z, 0-9, space, underscore)",
            )
        ]
    return []


def _check_patient_id(attrs: Attributes) -> list[Problem]:
    elem = attrs.get("PatientID")
    where = describe("PatientID")
    if elem is None or not elem.values or not str(elem.first).strip():
        return (
            []
            if attrs.present("PatientID") and elem is None
            else [
                Problem(
                    ReasonCode.MISSING_ATTRIBUTE,
                    f"{where}: missing or empty; expected a value (the SR copies it and studies "
                    "are checked for one patient)",
                )
            ]
        )
    if len(elem.values) > 1:
        return [Problem(ReasonCode.INVALID_VR, f"{where}: got {len(elem.values)} values; expected VM 1")]
    if len(str(elem.first)) > 64 and not _multibyte(attrs):
        return [
            Problem(ReasonCode.INVALID_VR, f"{where}: got {len(str(elem.first))} characters; expected at most 64 (LO)")
        ]
    if any(ord(ch) < 0x20 and ch != "\x1b" for ch in str(elem.first)):
        return [Problem(ReasonCode.INVALID_VR, f"{where}: contains control characters; expected LO text")]
    return []


def _multibyte(attrs: Attributes) -> bool:
    """Whether Specific Character Set allows several bytes per character (LO limits count
    characters, not bytes, PS3.5 6.2)."""
    charsets = attrs.get("SpecificCharacterSet")
    charset = "\\".join(str(v) for v in charsets.values) if charsets is not None else ""
    return any(c in charset for c in _MULTIBYTE_CHARSETS)


def check_meta(attrs: Attributes, _ts: str, expected_sop: str) -> list[Problem]:
    pairs = [
        ("SOPInstanceUID", "C-STORE request (Affected SOP Instance UID)", expected_sop),
        ("SOPClassUID", "MediaStorageSOPClassUID (0002,0002)", attrs.meta_text("MediaStorageSOPClassUID")),
        ("SOPInstanceUID", "MediaStorageSOPInstanceUID (0002,0003)", attrs.meta_text("MediaStorageSOPInstanceUID")),
    ]
    problems = []
    for keyword, source, claimed in pairs:
        actual = attrs.text(keyword)
        if claimed.strip() and actual and claimed.strip() != actual:
            problems.append(
                Problem(
                    ReasonCode.META_MISMATCH,
                    f"{describe(keyword)}: data set has {actual[:70]!r}; {source} says {claimed.strip()[:70]!r}",
                )
            )
    return problems
