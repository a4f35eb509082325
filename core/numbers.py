"""Whole numbers written by someone else: ASCII digits only, and not too many of them.

``str.isdigit`` then ``int`` is the obvious check, and wrong twice for text from a peer:
``isdigit`` also takes ``²`` and other digits ``int`` refuses (a ``ValueError`` where a clear
answer was due: an HTTP 500 for ``?limit=²``, a prior search that raised on a Study Time),
and ``int`` refuses strings of over 4,300 digits. Pure.
"""

from __future__ import annotations

__all__ = ["ascii_digits", "ascii_int"]


def ascii_digits(text: str | bytes) -> bool:
    """Whether ``text`` is one or more of the ASCII digits 0-9 and nothing else.

    >>> ascii_digits("0042"), ascii_digits("²"), ascii_digits("٣"), ascii_digits(""), ascii_digits(b"12")
    (True, False, False, False, True)
    """
    return bool(text) and text.isascii() and text.isdigit()


def ascii_int(text: str | bytes, max_digits: int = 18) -> int | None:
    """The non-negative whole number ``text`` writes in ASCII digits, or ``None`` when it
    is anything else or longer than ``max_digits`` digits (leading zeros count).

    >>> ascii_int("0042"), ascii_int("²"), ascii_int("-1"), ascii_int("9" * 5000), ascii_int(b"7")
    (42, None, None, None, 7)
    """
    if len(text) > max_digits or not ascii_digits(text):
        return None
    return int(text)
