"""Machine-readable reasons why received data is quarantined (the validator's vocabulary).

Each member's value is the stable code stored in the ledger, shown by ``pacsai quarantine`` and
matched by tests; its docstring is the human definition. Messages that go with a code name the
attribute (keyword and tag), what was found and what was expected, and never carry patient names
or IDs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Level", "Problem", "ReasonCode"]


class ReasonCode(enum.StrEnum):
    """Why an instance, a series or a study was quarantined."""

    UNREADABLE = "unreadable"
    """The data set could not be parsed, or a check could not interpret it at all."""
    TRUNCATED = "truncated"
    """The data set ends inside an element: bytes were lost in transfer or storage."""
    MISSING_ATTRIBUTE = "missing_attribute"
    """A required attribute is absent or empty."""
    INVALID_UID = "invalid_uid"
    """A UID breaks PS3.5 9.1 (digits and dots, no leading zeros, at most 64 characters)."""
    INVALID_VALUE = "invalid_value"
    """A value is outside what the standard allows (enumerated values, ranges)."""
    INVALID_VR = "invalid_vr"
    """An element is encoded with a VR other than the dictionary's, or breaks its VR (PS3.5 6.2)."""
    META_MISMATCH = "meta_mismatch"
    """File Meta Information or the C-STORE request contradicts the data set (PS3.10 7.1)."""
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    """The transfer syntax is unknown, malformed, or no installed decoder handles its pixels."""
    PIXEL_ATTRIBUTES_INCONSISTENT = "pixel_attributes_inconsistent"
    """Pixel description attributes contradict each other or the encoded stream."""
    PIXEL_DATA_MISSING = "pixel_data_missing"
    """An image has no Pixel Data, or an empty one."""
    PIXEL_LENGTH_MISMATCH = "pixel_length_mismatch"
    """Native Pixel Data length differs from Rows x Columns x Samples x Frames x Bits / 8."""
    FRAME_COUNT_MISMATCH = "frame_count_mismatch"
    """Number of Frames disagrees with the frames actually encoded (PS3.5 A.4)."""
    PIXEL_DATA_UNDECODABLE = "pixel_data_undecodable"
    """Encapsulated Pixel Data does not decode, or decodes to another shape than described."""
    SERIES_DIMENSIONS_MISMATCH = "series_dimensions_mismatch"
    """Slices of one series have different Rows or Columns."""
    SERIES_ORIENTATION_MISMATCH = "series_orientation_mismatch"
    """Slices of one series have different Image Orientation (Patient)."""
    SERIES_ATTRIBUTE_MISMATCH = "series_attribute_mismatch"
    """Series-level attributes (Modality, Frame of Reference UID) differ inside one series."""
    DUPLICATE_POSITION = "duplicate_position"
    """Two slices of one stack share an Image Position (Patient)."""
    SLICE_GAP = "slice_gap"
    """The distance between neighbouring slices exceeds the tolerance around the usual spacing."""
    PATIENT_MISMATCH = "patient_mismatch"
    """Instances of one study name different patients (Patient ID, issuer, birth date, sex)."""
    STUDY_ATTRIBUTE_MISMATCH = "study_attribute_mismatch"
    """Study-level attributes (Accession Number, Study Date) differ inside one study."""


class Level(enum.StrEnum):
    """What a finding is about: decides which instances it sets aside."""

    INSTANCE = "instance"
    """One instance: only it is quarantined."""
    SERIES = "series"
    """A series: every instance of that series is quarantined."""
    STUDY = "study"
    """A study: every instance of that study is quarantined."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding before it is attached to instances: a code, a message and its level."""

    code: ReasonCode
    message: str
    level: Level = Level.INSTANCE
