"""HL7 v2 character sets: MSH-18 labels as real interfaces write them, and decoding by them.

HL7 table 0211 names the character sets (``ASCII``, ``8859/1`` ... ``8859/15``, ``UNICODE UTF-8``,
``GB 18030-2000``, ...). Senders also write ``UTF-8``, ``UNICODE``, ``ISO-8859-1``,
``ISO_IR 100`` (the DICOM spelling), ``Latin1`` or ``WINDOWS-1252``; a label is compared
without case, blanks and punctuation, then looked up in Python's codec registry. A label is
usable only if the codec is ASCII-compatible: the MSH and the delimiters are ASCII bytes.

What a label cannot settle is never a reject (issue #16): a message whose bytes are all ASCII
reads the same in every such character set, so its label does not matter; one whose bytes do
not decode is answered AE naming the field (``core.hl7``), and the sender fixes and resends.

Pure: bytes in, text out.
"""

from __future__ import annotations

import codecs
import functools
import re
from dataclasses import dataclass

__all__ = ["BOM", "Decoded", "TABLE_0211", "codec_for", "decode"]

TABLE_0211 = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "ISO IR14": "iso2022_jp",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
}
"""HL7 table 0211 (v2.5+) -> Python codec. ``UNICODE`` (ISO/IEC 10646, no encoding form
given) arrives as UTF-8 on an 8-bit MLLP link; UTF-16 and UTF-32 are not ASCII-compatible."""

_ALIASES = {
    "UTF8": "utf-8",
    "ISOIR6": "ascii",
    "USASCII": "ascii",
    "ISOIR100": "latin-1",
    "ISOIR101": "iso8859-2",
    "ISOIR109": "iso8859-3",
    "ISOIR110": "iso8859-4",
    "ISOIR144": "iso8859-5",
    "ISOIR127": "iso8859-6",
    "ISOIR126": "iso8859-7",
    "ISOIR138": "iso8859-8",
    "ISOIR148": "iso8859-9",
    "ISOIR203": "iso8859-15",
    "ISOIR192": "utf-8",
    "LATIN9": "iso8859-15",
}
"""Labels outside table 0211 that real senders use (DICOM defined terms among them)."""

BOM = b"\xef\xbb\xbf"
"""A UTF-8 byte order mark: some senders write one before MSH; it is not part of the message."""

_PUNCTUATION = re.compile(r"[^0-9A-Z]")
_PROBE = "MSH|^~\\&#\r\n 0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz"


def _normal(label: str) -> str:
    return _PUNCTUATION.sub("", label.upper())


_KNOWN = {_normal(k): v for k, v in TABLE_0211.items()} | _ALIASES


@functools.lru_cache(maxsize=256)
def codec_for(label: str) -> str | None:
    """The Python codec of an MSH-18 label, or ``None`` if we cannot use it.

    >>> [codec_for(x) for x in ("UNICODE UTF-8", "UTF-8", "unicode", "8859/1", "ISO_IR 100")]
    ['utf-8', 'utf-8', 'utf-8', 'latin-1', 'latin-1']
    >>> codec_for("KOI8-R"), codec_for("UNICODE UTF-16"), codec_for("KLINGON")
    ('koi8-r', None, None)
    """
    name = _KNOWN.get(_normal(label))
    if name is None:
        try:
            info = codecs.lookup(label.strip())
        except LookupError:
            return None
        if not getattr(info, "_is_text_encoding", True):
            return None  # rot13, base64 and the like are not character sets
        name = info.name
    try:
        ascii_compatible = _PROBE.encode(name) == _PROBE.encode("ascii")
    except (UnicodeError, LookupError):
        return None
    return name if ascii_compatible else None


@dataclass(frozen=True, slots=True)
class Decoded:
    """A message's text and what went wrong decoding it.

    Attributes:
        text: The decoded text (Latin-1, byte for byte, when the bytes did not decode).
        codec: The codec used.
        bad_offset: Offset of the first byte that did not decode; -1 when all did.
        unknown_label: The label names no character set we can use, and the bytes are not
            all ASCII (so the label matters).
    """

    text: str
    codec: str
    bad_offset: int = -1
    unknown_label: bool = False


def decode(raw: bytes, label: str) -> Decoded:
    """Decode a message (without its BOM) by its MSH-18 label.

    An empty label means UTF-8, else Latin-1 (lenient: HL7's default is 7-bit ASCII, which
    both read alike). A label we cannot use is harmless while the bytes are ASCII.
    """
    if not label:
        try:
            return Decoded(raw.decode("utf-8"), "utf-8")
        except UnicodeDecodeError:
            return Decoded(raw.decode("latin-1"), "latin-1")
    codec = codec_for(label)
    if codec is None:
        if raw.isascii():
            return Decoded(raw.decode("ascii"), "ascii")
        first = next(i for i, b in enumerate(raw) if b > 0x7F)
        return Decoded(raw.decode("latin-1"), "latin-1", first, unknown_label=True)
    try:
        return Decoded(raw.decode(codec), codec)
    except UnicodeDecodeError as exc:
        return Decoded(raw.decode("latin-1"), "latin-1", exc.start)
