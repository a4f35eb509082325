"""The research export's privacy property, as a test helper: no identifying source value in the output.

``identifying_values`` collects, across a source data set and every nested item, the values of
the attributes the profile does not keep as they are (D, Z, X, U and the moved dates; private
attributes, curves and overlays too), in the forms they could reappear in: as stored, and for
dates also ``YYYY-MM-DD``, ``YYYY.MM.DD``, ``YYYY/MM/DD`` and ``DD/MM/YYYY``; for date-times
also the date alone. ``leaks`` greps raw output bytes for each.

Left out, because they would match by chance or are not identifying in the output: values
shorter than four characters ("M", "1"), zeros ("0.000000"), and values that also occur in an
attribute the profile keeps (a Manufacturer of "TOSHIBA" that is also the Institution Name).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from core.deid import Action, profile_actions

__all__ = ["identifying_values", "leaks"]

_UID = re.compile(r"^[0-9]+(\.[0-9]+){2,}$")
_BINARY = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "SQ"})


def _elements(ds: Dataset) -> Iterator[DataElement]:
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _elements(item)


def _values(elem: DataElement) -> list[str]:
    if elem.value is None or elem.VR in _BINARY:
        return []
    values = elem.value if elem.VM > 1 and not isinstance(elem.value, str | bytes) else [elem.value]
    return [str(v).strip() for v in values if str(v).strip()]


def _forms(value: str, vr: str) -> list[str]:
    """The value and, for dates, the other ways a date is commonly written."""
    forms = [value]
    date = value[:8] if vr in ("DA", "DT") and len(value) >= 8 and value[:8].isdigit() else ""
    if date:
        y, m, d = date[:4], date[4:6], date[6:8]
        forms += [date, f"{y}-{m}-{d}", f"{y}.{m}.{d}", f"{y}/{m}/{d}", f"{d}/{m}/{y}"]
    return forms


def _identifying(elem: DataElement, table: dict[int, Action]) -> bool:
    tag = int(elem.tag)
    group = tag >> 16
    if group & 1 or (group & 0xFF00) in (0x5000, 0x6000):
        return True
    return table.get(tag, Action.KEEP) not in (Action.KEEP, Action.CLEAN)


def identifying_values(sources: Iterable[Dataset]) -> set[str]:
    """Every identifying value of ``sources`` (nested items and file meta UIDs included)."""
    table = profile_actions()
    found: set[str] = set()
    kept: set[str] = set()
    for ds in sources:
        meta = getattr(ds, "file_meta", None)
        if meta is not None and meta.get("MediaStorageSOPInstanceUID"):
            found.add(str(meta.MediaStorageSOPInstanceUID))
        for elem in _elements(ds):
            if table.get(int(elem.tag)) is Action.CLEAN:
                continue  # cleaned: neither identifying as a whole nor kept as it is
            target = found if _identifying(elem, table) else kept
            for value in _values(elem):
                target.update(_forms(value, elem.VR) if target is found else [value])
    kept_text = "\n".join(kept)
    return {v for v in found if len(v) >= 4 and v.strip("0.+- ") and v not in kept_text}


def _pattern(value: str) -> re.Pattern[bytes]:
    """A UID matches whole (``1.2.3`` is not in ``1.2.3.4``); any other value anywhere."""
    escaped = re.escape(value.encode("utf-8", "replace"))
    return re.compile(rb"(?<![0-9.])" + escaped + rb"(?![0-9.])" if _UID.match(value) else escaped)


def leaks(values: Iterable[str], outputs: Iterable[bytes]) -> list[str]:
    """The values found in any output's bytes (ASCII, as DICOM text is stored here)."""
    blobs = list(outputs)
    return sorted(v for v in values if any(_pattern(v).search(blob) for blob in blobs))
