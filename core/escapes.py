"""HL7 v2 escape sequences (HL7 v2.5 2.7): resolve them in received values, make them in ours.

Our own implementation, because python-hl7's ``unescape`` logs the whole value (an address,
a name) with ``logger.exception`` when it meets a sequence it does not know, and silently
drops the rest of a value whose escape character is never closed (issue #16). Here nothing is
logged, and no text is lost:

- delimiters (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``, and ``\\P\\`` for v2.7's truncation character)
  become the character;
- highlighting (``\\H\\`` ... ``\\N\\``) is dropped and the highlighted text kept;
- ``\\Xhh..\\`` becomes those bytes, read in the message's character set;
- formatting commands (``\\.br\\``, ``\\.sp\\``, ``\\.ce\\``: a line break; ``\\.sk\\``: a
  blank; ``\\.fi\\ \\.nf\\ \\.in\\ \\.ti\\``: nothing); the count of ``\\.sp<n>\\`` and
  ``\\.sk<n>\\`` is honoured up to the sequence's own length, so that no value grows when
  its escapes are resolved (``\\.sk999999999\\``, 14 characters, made a gigabyte of blanks
  in the process deciding the message, again at every resend; FHIR strings carry no layout),
  and a number that is not ASCII digits leaves the sequence as received;
- character set switches (``\\C..\\``, ``\\M..\\``) are dropped: we cannot switch;
- anything else, and an escape character that is never closed, stays as it was received.

Pure: strings in, strings out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Delimiters", "escape", "unescape"]

_FORMATTING = {".br": "\n", ".sp": "\n", ".ce": "\n", ".sk": " ", ".fi": "", ".nf": "", ".in": "", ".ti": ""}
"""HL7 v2.5 2.7.6 formatting commands -> plain text (FHIR strings carry no layout)."""
_ARGUMENT = re.compile(r"[+-]?[0-9]+")
"""A formatting command's number: ASCII digits (``str.isdigit`` also takes ``²``, which
``int`` refuses), signed for ``.in`` and ``.ti``."""


@dataclass(frozen=True, slots=True)
class Delimiters:
    """MSH-1 and MSH-2 of a message (2.5.4): the characters its escapes stand for."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = "#"

    @classmethod
    def of(cls, fs: str, enc: str) -> Delimiters:
        """From MSH-1 and MSH-2 (``^~\\&`` and, from v2.7, a truncation character)."""
        return cls(fs, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) > 4 else "#")


def _hex(digits: str, codec: str) -> str | None:
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        return None
    try:
        return data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return data.decode("latin-1")


def _sequence(body: str, d: Delimiters, codec: str) -> str | None:
    """What one escape sequence (without its escape characters) stands for; ``None``: keep
    it as received."""
    simple = {
        "F": d.field,
        "S": d.component,
        "T": d.subcomponent,
        "R": d.repetition,
        "E": d.escape,
        "P": d.truncation,
        "H": "",
        "N": "",
    }
    if body in simple:
        return simple[body]
    command, argument = body[:3], body[3:]
    if command in _FORMATTING and (not argument or _ARGUMENT.fullmatch(argument)):
        count = 1
        if command in (".sp", ".sk") and argument[:1].isdigit():  # never longer than the sequence itself
            count = min(int(argument.lstrip("0")[:9] or "0"), len(body) + 2)
        return _FORMATTING[command] * count
    if body[:1] == "X" and len(body) > 1:
        return _hex(body[1:], codec)
    if body[:1] in ("C", "M") and len(body) in (5, 7):
        return ""
    return None


def unescape(value: str, delimiters: Delimiters, codec: str = "utf-8") -> str:
    """Resolve the escape sequences of one received value (HL7 v2.5 2.7).

    >>> d = Delimiters()
    >>> unescape("\\\\H\\\\DOE\\\\N\\\\^\\\\F\\\\", d), unescape("A\\\\X42\\\\C", d)
    ('DOE^|', 'ABC')
    >>> unescape("C:\\\\TEMP", d), unescape("50 \\\\Q\\\\ 7", d)
    ('C:\\\\TEMP', '50 \\\\Q\\\\ 7')

    Args:
        value: One field, component or subcomponent value as received.
        delimiters: The message's delimiters.
        codec: The message's character set (Python codec), for ``\\X..\\`` bytes.
    """
    esc = delimiters.escape
    out: list[str] = []
    i = 0
    while True:
        start = value.find(esc, i)
        end = value.find(esc, start + 1) if start >= 0 else -1
        if end < 0:  # no escape left, or one never closed: the rest as it is
            out.append(value[i:])
            return "".join(out)
        out.append(value[i:start])
        resolved = _sequence(value[start + 1 : end], delimiters, codec)
        out.append(value[start : end + 1] if resolved is None else resolved)
        i = end + 1


def escape(value: str) -> str:
    """Escape a value for ER7 with the standard delimiters.

    >>> escape("a|b^c&d~e\\\\f")
    'a\\\\F\\\\b\\\\S\\\\c\\\\T\\\\d\\\\R\\\\e\\\\E\\\\f'
    """
    out = value.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
    out = out.replace("&", "\\T\\").replace("~", "\\R\\")
    return out.replace("\r", "\\X0D\\").replace("\n", "\\X0A\\")
