"""Fast reads of the few attributes validation needs, straight from the raw element bytes.

pydicom converts a raw element the first time it is accessed, running its value hooks and its
value validation (which raises or warns depending on a process-wide setting). For the twenty or
so attributes the validator reads, that costs about as much as parsing the whole file, and its
behaviour would depend on that global setting. So the validator decodes the raw bytes itself
for the VRs it reads (PS3.5 6.2), and takes an element that pydicom already converted as it is.

Nothing here raises on bad data except ``ElementError``, which carries a message naming the
attribute, what was found and what was expected.
"""

from __future__ import annotations

import functools
import math
import struct
from typing import Any, NamedTuple

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from core.reasons import Problem, ReasonCode

__all__ = ["Attributes", "Element", "ElementError", "LookupTag", "describe", "read"]

_BINARY = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "AT": "HH"}
_TEXT = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
_BULK = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})


class ElementError(ValueError):
    """An element's bytes cannot be read as its VR."""


class Element(NamedTuple):
    """One attribute as the validator sees it (a tuple: cheap to make, ~40 per instance).

    Attributes:
        keyword: DICOM keyword.
        tag: The tag as an int.
        vr: The VR it was encoded with (the dictionary's for implicit VR).
        expected_vr: The dictionary VR (may list options, e.g. ``"OB or OW"``).
        values: Decoded values: ``str`` for text VRs, numbers for binary VRs, empty for bulk data.
        raw: The undecoded value bytes, when the element was still raw.
        length: Value length in bytes (for bulk data such as Pixel Data).
    """

    keyword: str
    tag: int
    vr: str
    expected_vr: str
    values: tuple[Any, ...]
    raw: bytes | None
    length: int

    @property
    def first(self) -> Any:
        """The first value, or ``None`` when the element is empty."""
        return self.values[0] if self.values else None

    @property
    def vr_matches(self) -> bool:
        """Whether the encoded VR is one the dictionary allows (UN always is: PS3.5 6.2.2)."""
        return not self.expected_vr or self.vr == "UN" or self.vr in _spec(self.keyword)[2]


@functools.lru_cache(maxsize=1024)
def describe(keyword: str) -> str:
    """Return ``"Keyword (gggg,eeee)"`` for messages.

    >>> describe("Rows")
    'Rows (0028,0010)'
    """
    tag = tag_for_keyword(keyword)
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else keyword


class LookupTag(BaseTag):
    """A tag to look elements up with: ``int`` equality, no Python-level ``__eq__``.

    A dict lookup that finds a key compares the stored key with the one looked up; pydicom's
    ``BaseTag.__eq__`` is Python code (about a microsecond). Python tries the subclass's
    (reflected) comparison first, so a ``LookupTag`` compares as a plain int does.
    """

    __slots__ = ()
    __eq__ = int.__eq__
    __ne__ = int.__ne__
    __hash__ = int.__hash__


_SPECS: dict[str, tuple[int, str, frozenset[str]]] = {}


def _spec(keyword: str) -> tuple[int, str, frozenset[str]]:
    """``(tag, dictionary VR, allowed VRs)`` of a keyword, looked up once."""
    found = _SPECS.get(keyword)
    if found is None:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ElementError(f"{keyword}: not a DICOM keyword")
        try:
            expected = str(dictionary_VR(tag))
        except KeyError:
            expected = ""
        # A LookupTag key saves pydicom's Tag() conversion and BaseTag.__eq__ on every read.
        found = (LookupTag(tag), expected, frozenset(v.strip() for v in expected.split(" or ")))
        _SPECS[keyword] = found
    return found


def read(ds: Dataset, keyword: str) -> Element | None:
    """Return the attribute ``keyword`` of ``ds``, or ``None`` when it is absent.

    Raises:
        ElementError: ``keyword`` is unknown, or the element's bytes cannot be read as its VR.
    """
    tag, expected, _ = _spec(keyword)
    item = ds.get_item(tag, keep_deferred=True)  # the raw element as read: no conversion
    if item is None:
        return None
    if isinstance(item, RawDataElement):
        return _from_raw(keyword, item, expected)
    return _from_element(keyword, item, expected)


def _from_element(keyword: str, elem: DataElement, expected: str) -> Element:
    value = elem.value
    if value is None or value == "" or elem.VR == "SQ":
        values: tuple[Any, ...] = ()
    elif isinstance(value, MultiValue | list | tuple):
        values = tuple(value)
    elif isinstance(value, bytes | bytearray | memoryview) and elem.VR not in _TEXT:
        values = ()
    else:
        values = (value,)
    if elem.VR in _TEXT:
        values = tuple("" if v is None else str(v) for v in values)
    raw = bytes(value) if isinstance(value, bytes | bytearray | memoryview) else None
    length = len(raw) if raw is not None else len(str(value)) if value is not None else 0
    return Element(keyword, int(elem.tag), str(elem.VR), expected, values, raw, length)


def _from_raw(keyword: str, raw: RawDataElement, expected: str) -> Element:
    # Implicit VR leaves the VR to the dictionary; pydicom may already have put the dictionary's
    # "OB or OW" there. Either way the first option is what the element is read as.
    encoded = raw.VR or expected
    if " or " in encoded:
        encoded = encoded.split(" or ")[0]
    data = raw.value
    if data.__class__ is not bytes:
        # deferred or buffered values are not read here: treated as empty
        data = bytes(data) if isinstance(data, bytearray | memoryview) else b""
    if encoded == "UN" and expected:  # UN holds Implicit VR Little Endian bytes (PS3.5 6.2.2)
        values = _decode(keyword, expected.split(" or ")[0], data, True)
    else:
        values = _decode(keyword, encoded, data, raw.is_little_endian)
    return Element(keyword, int(raw.tag), encoded, expected, values, data, len(data))


_MEMO: dict[tuple[Any, ...], Element | str] = {}
_MEMO_SIZE = 8192
_MEMO_BYTES = 256
_NUMBERS: dict[tuple[Any, ...], tuple[Any, ...]] = {}
"""Numbers of DS / IS values already converted (orientation, spacing...), by kind and values."""


def _from_raw_cached(keyword: str, raw: RawDataElement, expected: str) -> Element:
    """:func:`_from_raw`, remembered for short values: the slices of a series repeat most of
    their attributes byte for byte, so each distinct (keyword, VR, bytes, byte order) is decoded
    once. The key holds everything ``_from_raw`` reads; an ``ElementError`` is remembered too."""
    data = raw.value
    if data.__class__ is not bytes or len(data) > _MEMO_BYTES:
        return _from_raw(keyword, raw, expected)
    key = (keyword, raw.VR, data, raw.is_little_endian, raw.tag.real)  # .real: a plain int, cheap to compare
    found = _MEMO.get(key)
    if found is None:
        try:
            found = _from_raw(keyword, raw, expected)
        except ElementError as exc:
            found = str(exc)
        if len(_MEMO) >= _MEMO_SIZE:
            _MEMO.clear()  # bounded: values come from the network
        _MEMO[key] = found
    if found.__class__ is str:
        raise ElementError(found)
    return found  # type: ignore[return-value]


_STRUCTS: dict[tuple[bool, str, int], struct.Struct] = {}
_STRIPPED = frozenset({"DS", "IS", "UI"})


def _decode(keyword: str, vr: str, data: bytes, little: bool) -> tuple[Any, ...]:
    if not data or vr in _BULK or vr == "SQ":
        return ()
    if vr in _TEXT:
        text = data.decode("latin-1").rstrip("\x00 ")
        if "\\" not in text:
            return (text.strip(" \x00") if vr in _STRIPPED else text,)
        return tuple(v.strip(" \x00") if vr in _STRIPPED else v for v in text.split("\\"))
    fmt = _BINARY.get(vr)
    if fmt is None:
        return ()
    key = (little, vr, len(data))
    packer = _STRUCTS.get(key)
    if packer is None:
        size = struct.calcsize("<" + fmt)  # standard sizes, not the platform's
        if len(data) % size:
            raise ElementError(f"{describe(keyword)}: got {len(data)} bytes; expected a multiple of {size} for VR {vr}")
        packer = struct.Struct(("<" if little else ">") + fmt * (len(data) // size))
        if len(_STRUCTS) < 4096:  # bounded: lengths come from the data
            _STRUCTS[key] = packer
    return packer.unpack(data)


class Attributes:
    """Cached reads of one dataset's attributes; VR problems are collected, never raised."""

    def __init__(self, ds: Dataset) -> None:
        """Args:
        ds: The dataset to read.
        """
        self.ds = ds
        # get_item(tag, keep_deferred=True) is _dict.get(Tag(tag)): read the dict directly when
        # the class does not change that (it costs a third of a read otherwise).
        self._items: dict[Any, Any] | None = (
            ds._dict if type(ds).get_item is Dataset.get_item and isinstance(getattr(ds, "_dict", None), dict) else None
        )
        self.problems: list[Problem] = []
        self._cache: dict[str, Element | None] = {}
        self._bad: set[str] = set()
        self._meta: Attributes | None = None

    def meta_text(self, keyword: str) -> str:
        """A File Meta Information attribute as text (``""`` when there is no File Meta)."""
        if self._meta is None:
            meta = getattr(self.ds, "file_meta", None)
            self._meta = Attributes(meta if meta is not None else Dataset())
            self._meta.problems = self.problems  # one list: meta VR problems are reported too
        return self._meta.text(keyword)

    def item(self, tag: int) -> Any:
        """The element at ``tag`` as stored: raw (unconverted) or a DataElement; ``None`` if absent.

        The same as ``ds.get_item(tag, keep_deferred=True)``, straight from the data set's dict
        when it is a plain pydicom Dataset (``get_item`` converts its key with ``Tag()`` first).
        """
        items = self._items
        return items.get(tag) if items is not None else self.ds.get_item(tag, keep_deferred=True)

    @property
    def raw_items(self) -> dict[Any, Any] | None:
        """The data set's own element dict (``None`` for a Dataset class that reads otherwise)."""
        return self._items

    def decoded(self, keyword: str) -> bool:
        """Whether ``keyword`` was read (decoded as its VR) by :meth:`get`."""
        return keyword in self._cache

    def get(self, keyword: str) -> Element | None:
        """Return the element (``None`` if absent or unreadable as its VR)."""
        cache = self._cache
        if keyword in cache:
            return cache[keyword]
        tag, expected, allowed = _spec(keyword)  # read(), inlined: this runs ~40 times per instance
        items = self._items
        item = items.get(tag) if items is not None else self.ds.get_item(tag, keep_deferred=True)
        elem = None
        if item is not None:
            try:
                elem = (
                    _from_raw_cached(keyword, item, expected)
                    if isinstance(item, RawDataElement)
                    else _from_element(keyword, item, expected)
                )
            except ElementError as exc:
                self._flag(keyword, str(exc))
        if elem is not None and expected and elem.vr not in allowed and elem.vr != "UN":
            self._flag(keyword, f"{describe(keyword)}: got VR {elem.vr}; expected {elem.expected_vr}")
            elem = None
        cache[keyword] = elem
        return elem

    def _flag(self, keyword: str, message: str) -> None:
        self._bad.add(keyword)
        self.problems.append(Problem(ReasonCode.INVALID_VR, message))

    def quick_text(self, keyword: str) -> str:
        """The whole value as stripped text, without decoding it as its VR: for attributes that
        are only compared between instances (Patient's Sex, Echo Numbers...). Raw bytes are
        read as Latin-1, as :func:`read` does, so raw and converted elements compare alike for
        the default repertoire."""
        if keyword in self._cache:
            elem = self._cache[keyword]
            return "\\".join(map(str, elem.values)).strip() if elem is not None else ""
        item = self.item(_spec(keyword)[0])
        if item is None:
            return ""
        value = item.value
        if isinstance(value, bytes):
            return value.decode("latin-1").strip(" \x00")
        if isinstance(value, MultiValue | list | tuple):
            return "\\".join(map(str, value)).strip()
        return "" if value is None else str(value).strip()

    def present(self, keyword: str) -> bool:
        """Whether the attribute is in the data set with a value (even an unreadable one)."""
        elem = self.get(keyword)
        return keyword in self._bad or (elem is not None and (bool(elem.values) or elem.length > 0))

    def text(self, keyword: str) -> str:
        """The first value as text, stripped; ``""`` when absent or empty."""
        elem = self.get(keyword)
        first = elem.first if elem is not None else None
        return "" if first is None else str(first).strip()

    def integer(self, keyword: str) -> int | None:
        """The first value as an int (US, UL, IS); ``None`` when absent, flagged if not an int."""
        values = self.numbers(keyword, int)
        return int(values[0]) if values else None

    def numbers(self, keyword: str, kind: type = float) -> tuple[Any, ...] | None:
        """Every value as a number (DS, IS or binary VRs); ``None`` when absent or unreadable."""
        elem = self.get(keyword)
        if elem is None or not elem.values:
            return None
        values = elem.values
        if kind is int and all(type(v) is int for v in values):
            return values  # binary VRs (US, UL...) decode to ints already
        key = (kind, elem.vr, values)  # text VRs only: their values are str (-0.0 == 0.0 would alias)
        found = _NUMBERS.get(key) if elem.vr in _TEXT else None
        if found is not None:
            return found
        try:
            found = tuple(_number(v, kind) for v in values)
            if elem.vr in _TEXT:
                if len(_NUMBERS) >= _MEMO_SIZE:
                    _NUMBERS.clear()
                _NUMBERS[key] = found
            return found
        except (TypeError, ValueError, OverflowError):
            shown = "\\".join(str(v) for v in elem.values)[:40]
            self._flag(
                keyword,
                f"{describe(keyword)}: got {shown!r}; expected finite {kind.__name__} value(s) for VR {elem.vr}",
            )
            self._cache[keyword] = None
            return None


def _number(value: Any, kind: type) -> Any:
    if isinstance(value, str):
        text = value.strip()
        number = int(text) if kind is int else float(text)
    else:
        number = kind(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not finite")
    return number
