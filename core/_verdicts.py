"""Remembered verdicts: what the instance checks found for the attributes a series shares.

Most of what :class:`core.validation.Validator` checks is the same, byte for byte, in every
slice of a series: the Image Pixel description, the plane's orientation and spacing, the SOP
Class, Study and Series UIDs, Modality, Patient ID, the transfer syntax. Once one instance with
exactly those bytes was found clean by the full checks, the next one only needs the checks of
what differs per instance (its SOP Instance UID, File Meta, position, Pixel Data, the end of the
file). The key holds the raw bytes, VR and byte order of every element those shared checks read,
so an instance that differs in any of them is checked in full. Only clean verdicts are kept: a
finding is always worded by the full checks.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from dataclasses import dataclass

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue

from core._elements import Attributes, LookupTag
from core.pixels import PixelDescription

__all__ = ["KEY_TAGS", "UID_SYNTAX", "Verdict", "verdict_key"]

UID_SYNTAX = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
"""PS3.5 9.1 (the pattern of ``core.instance_checks``)."""

KEY_TAGS = tuple(
    LookupTag(tag)
    for tag in (
        0x00080005,  # SpecificCharacterSet (Patient ID length rule)
        0x00080016,  # SOPClassUID
        0x00080060,  # Modality
        0x00100020,  # PatientID
        0x0020000D,  # StudyInstanceUID
        0x0020000E,  # SeriesInstanceUID
        0x00200037,  # ImageOrientationPatient
        0x00181164,  # ImagerPixelSpacing
        0x00280002,  # SamplesPerPixel
        0x00280004,  # PhotometricInterpretation
        0x00280006,  # PlanarConfiguration
        0x00280008,  # NumberOfFrames
        0x00280010,  # Rows
        0x00280011,  # Columns
        0x00280030,  # PixelSpacing
        0x00280100,  # BitsAllocated
        0x00280101,  # BitsStored
        0x00280102,  # HighBit
        0x00280103,  # PixelRepresentation
        0x00080020,  # StudyDate (facts)
        0x00080050,  # AccessionNumber (facts)
        0x00100021,  # IssuerOfPatientID (facts)
        0x00100030,  # PatientBirthDate (facts)
        0x00100040,  # PatientSex (facts)
        0x00200052,  # FrameOfReferenceUID (facts)
    )
)
"""Every data set element the shared checks and facts read (with the File Meta's Transfer Syntax and
Media Storage SOP Class UIDs, the received transfer syntax, and whether Image Position
(Patient) and Pixel Data are present)."""
_FULL_CHECKS_ONLY = tuple(
    LookupTag(tag)
    for tag in (
        0x52009229,  # SharedFunctionalGroupsSequence
        0x52009230,  # PerFrameFunctionalGroupsSequence
        0x7FE00008,  # FloatPixelData
        0x7FE00009,  # DoubleFloatPixelData
    )
)
"""Enhanced multi-frame and float images are always checked in full (their sequences are read
through pydicom, not as raw bytes)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A clean verdict on the shared attributes, and what the per-instance checks need of it.

    Attributes:
        keyword: The Pixel Data keyword (``None`` for a non-image).
        desc: The Image Pixel description (``None`` for a non-image).
        replay: Compared-only attributes the full checks decoded (see ``quick_text``).
        shared: The facts the series shares (``core.validation._shared_facts``).
        plane: Orientation, Rows and Columns of its slices (``core.validation._plane``).
    """

    keyword: str | None
    desc: PixelDescription | None
    replay: tuple[str, ...]
    shared: tuple[str, str, str, str, tuple[str, ...], tuple[str, ...]]
    plane: tuple[tuple[float, ...], int, int] | None


_META_TAGS = (LookupTag(0x00020010), LookupTag(0x00020002))
"""File Meta Transfer Syntax UID and Media Storage SOP Class UID."""
_UNKEYABLE = ("unkeyable",)


_DIGEST_KEY = os.urandom(16)
"""Keys the digests: a key names no attribute value, and two processes' keys never match."""


def verdict_key(attrs: Attributes, ts: str) -> bytes | None:
    """The key of an instance's shared attributes: a keyed BLAKE2b digest of their raw bytes
    (they hold Patient ID and the like: the validator keeps no attribute value in its memory);
    ``None`` when they cannot be keyed by raw bytes (an element pydicom converted to something
    else than text, a Dataset class that reads otherwise, enhanced multi-frame, float pixels)."""
    items = attrs.raw_items
    meta = getattr(attrs.ds, "file_meta", None)
    meta_items = {} if meta is None else Attributes(meta).raw_items
    if items is None or meta_items is None or any(tag in items for tag in _FULL_CHECKS_ONLY):
        return None
    key = (
        ts,
        attrs.present("ImagePositionPatient"),
        attrs.present("PixelData"),
        *[_part(item) for item in map(meta_items.get, _META_TAGS)],
        *[_part(item) for item in map(items.get, KEY_TAGS)],
    )
    if _UNKEYABLE in key:
        return None
    return hashlib.blake2b(pickle.dumps(key, protocol=5), digest_size=16, key=_DIGEST_KEY).digest()


def _part(item: object) -> object:
    """An element's key part: ``None`` when absent, VR, bytes and byte order when raw."""
    if item is None:
        return None
    if item.__class__ is RawDataElement and item[3].__class__ is bytes:  # type: ignore[index]
        return (item[1], item[3], item[6])  # type: ignore[index]  # VR, value, is_little_endian
    return _converted(item)


def _converted(item: object) -> tuple[object, ...]:
    """The key part of an element pydicom already converted (it converts Specific Character
    Set and File Meta elements while reading): its VR and text value(s)."""
    if not isinstance(item, DataElement):
        return _UNKEYABLE
    value = item.value
    if isinstance(value, str):  # str or UID: the validator reads either as str()
        return ("converted", item.VR, str(value))
    if isinstance(value, MultiValue) and all(isinstance(v, str) for v in value):
        return ("converted", item.VR, tuple(str(v) for v in value), "multi")
    return _UNKEYABLE
