"""Validation of received instances (first cut; issue #4 extends it).

Every problem has a machine-readable reason code (``ReasonCode``) and a message that names the
attribute, what was found and what was expected. The validator never raises on a dataset: a
dataset too broken to inspect is itself a finding (``UNREADABLE``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable

from pydicom.dataset import Dataset

from core.types import ValidationIssue

__all__ = ["ReasonCode", "Validator"]

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class ReasonCode(enum.StrEnum):
    """Why an instance was quarantined."""

    UNREADABLE = "unreadable"
    """The dataset could not be parsed at all."""
    MISSING_ATTRIBUTE = "missing_attribute"
    """A required attribute is absent or empty."""
    INVALID_UID = "invalid_uid"
    """A UID breaks PS3.5 9.1 (digits and dots, no leading zeros, at most 64 characters)."""
    INVALID_VALUE = "invalid_value"
    """An attribute has a value outside what the standard allows."""
    PIXEL_ATTRIBUTES_INCONSISTENT = "pixel_attributes_inconsistent"
    """Pixel description attributes contradict each other (e.g. Bits Stored > Bits Allocated)."""
    PIXEL_DATA_MISSING = "pixel_data_missing"
    """An image has no Pixel Data, or an empty one."""
    PIXEL_LENGTH_MISMATCH = "pixel_length_mismatch"
    """Native Pixel Data length differs from Rows x Columns x Samples x Frames x Bits / 8."""


_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
_PIXEL_KEYWORDS = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "SamplesPerPixel",
    "PhotometricInterpretation",
)
_PHOTOMETRIC = frozenset(
    {
        "MONOCHROME1",
        "MONOCHROME2",
        "PALETTE COLOR",
        "RGB",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_PARTIAL_420",
        "YBR_ICT",
        "YBR_RCT",
        "XYB",
    }
)
_NATIVE_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
)


class Validator:
    """Checks one instance's header and pixel description."""

    def check_instance(self, ds: Dataset, transfer_syntax_uid: str = "") -> list[ValidationIssue]:
        """Return every problem found in ``ds`` (empty when it is fine). Never raises.

        Args:
            ds: The full dataset (with Pixel Data when it has any).
            transfer_syntax_uid: The transfer syntax it arrived in.
        """
        sop = str(getattr(ds, "SOPInstanceUID", "") or "")
        issues: list[ValidationIssue] = []
        checks: tuple[Callable[[Dataset, str], list[tuple[ReasonCode, str]]], ...] = (
            _check_uids,
            _check_modality,
            _check_pixels,
        )
        for check in checks:
            try:
                found = check(ds, transfer_syntax_uid)
            except Exception as exc:  # a check must never take the validator down
                found = [(ReasonCode.UNREADABLE, f"{check.__name__}: {type(exc).__name__}: {exc}")]
            issues += [ValidationIssue(str(code), msg, sop) for code, msg in found]
        return issues


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _check_uids(ds: Dataset, _ts: str) -> list[tuple[ReasonCode, str]]:
    found: list[tuple[ReasonCode, str]] = []
    for kw in _UID_KEYWORDS:
        value = _text(ds, kw)
        if not value:
            found.append((ReasonCode.MISSING_ATTRIBUTE, f"{kw}: missing; expected a UID"))
        elif len(value) > 64 or not _UID.match(value):
            found.append(
                (ReasonCode.INVALID_UID, f"{kw}: got {value[:70]!r}; expected PS3.5 9.1 UID syntax")
            )
    return found


def _check_modality(ds: Dataset, _ts: str) -> list[tuple[ReasonCode, str]]:
    value = _text(ds, "Modality")
    if not value:
        return [(ReasonCode.MISSING_ATTRIBUTE, "Modality: missing; expected a CS value")]
    if len(value) > 16 or not re.fullmatch(r"[A-Z0-9_ ]+", value):
        return [(ReasonCode.INVALID_VALUE, f"Modality: got {value!r}; expected a CS value")]
    return []


def _check_pixels(ds: Dataset, ts: str) -> list[tuple[ReasonCode, str]]:
    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    described = any(k in ds for k in _PIXEL_KEYWORDS)
    if not has_pixels and not described:
        return []  # not an image (SR, KOS, ...): nothing to check here
    missing = [k for k in _PIXEL_KEYWORDS if _text(ds, k) == ""]
    if missing:
        return [(ReasonCode.MISSING_ATTRIBUTE, f"{k}: missing; expected a value") for k in missing]
    if not has_pixels:
        return [(ReasonCode.PIXEL_DATA_MISSING, "PixelData: missing; expected image data")]
    found = _pixel_description(ds)
    if found:
        return found
    return _pixel_length(ds, ts)


def _pixel_description(ds: Dataset) -> list[tuple[ReasonCode, str]]:
    found: list[tuple[ReasonCode, str]] = []
    rows, cols = int(ds.Rows), int(ds.Columns)
    allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
    if rows < 1 or cols < 1:
        found.append(
            (ReasonCode.INVALID_VALUE, f"Rows/Columns: got {rows}x{cols}; expected both >= 1")
        )
    if allocated not in (1, 8, 16, 32, 64):
        found.append(
            (ReasonCode.INVALID_VALUE, f"BitsAllocated: got {allocated}; expected 1/8/16/32/64")
        )
    if not 1 <= stored <= allocated:
        found.append(
            (
                ReasonCode.PIXEL_ATTRIBUTES_INCONSISTENT,
                f"BitsStored: got {stored}; expected 1..BitsAllocated ({allocated})",
            )
        )
    photometric = _text(ds, "PhotometricInterpretation")
    if photometric not in _PHOTOMETRIC:
        found.append(
            (
                ReasonCode.INVALID_VALUE,
                f"PhotometricInterpretation: got {photometric!r}; expected a PS3.3 C.7.6.3.1.2 term",
            )
        )
    samples = int(ds.SamplesPerPixel)
    if photometric.startswith("MONOCHROME") and samples != 1:
        found.append(
            (
                ReasonCode.PIXEL_ATTRIBUTES_INCONSISTENT,
                f"SamplesPerPixel: got {samples}; expected 1 for {photometric}",
            )
        )
    return found


def _pixel_length(ds: Dataset, ts: str) -> list[tuple[ReasonCode, str]]:
    if "PixelData" not in ds:
        return []
    if ts and ts not in _NATIVE_SYNTAXES:
        return []  # encapsulated: decodability is checked by the pixel decoder (issue #4)
    data = ds.PixelData
    frames = int(_text(ds, "NumberOfFrames") or 1)
    bits = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * frames * int(ds.BitsAllocated)
    expected = (bits + 7) // 8
    if not data:
        return [(ReasonCode.PIXEL_DATA_MISSING, "PixelData: empty; expected image data")]
    # PS3.5 8.1.1: odd lengths are padded to even.
    if len(data) not in (expected, expected + (expected % 2)):
        return [
            (
                ReasonCode.PIXEL_LENGTH_MISMATCH,
                f"PixelData: got {len(data)} bytes; expected {expected} "
                f"(Rows x Columns x Samples x Frames x BitsAllocated / 8)",
            )
        ]
    return []
