"""Keyed, deterministic replacements for research export (``core.deid``): pseudonyms, UIDs, dates.

Every replacement is an HMAC-SHA256 of the original under the project's key, so one project
gets the same pseudonym for the same patient and the same UID for the same original UID in
every export run (references between instances, series and later exports stay consistent),
while without the key nobody can map a pseudonym back or test a guess. Each project has its
own key (``project_key``): two projects' exports cannot be joined.

Dates follow PS3.15 E.3.6, *Retain Longitudinal Temporal Information with Modified Dates*:
every date and time of a patient moves by the same keyed offset (whole days plus seconds of
the day), so intervals within and across that patient's studies are kept. A date that comes
with its time (``StudyDate`` with ``StudyTime``) moves as one instant, so the pair stays exact.
"""

from __future__ import annotations

import base64
import hmac
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

__all__ = ["DateShift", "DeidKeys", "project_key", "shift_da", "shift_da_tm", "shift_dt", "shift_tm"]

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")


def project_key(master: bytes, project: str) -> bytes:
    """Derive the key of one research project from the site's export key.

    >>> project_key(b"k" * 32, "a") != project_key(b"k" * 32, "b")
    True
    """
    return hmac.digest(master, f"pacsai-deid-project:{project}".encode(), "sha256")


@dataclass(frozen=True, slots=True)
class DateShift:
    """One patient's offset: dates move back by ``days``, then forward by ``seconds``."""

    days: int
    seconds: int

    @property
    def delta(self) -> timedelta:
        """The whole offset as one interval (for values that carry a date and a time)."""
        return timedelta(days=-self.days, seconds=self.seconds)


@dataclass(frozen=True, slots=True)
class DeidKeys:
    """The keyed derivations of one project (pure: the key comes from the caller)."""

    key: bytes
    max_shift_days: int = 365

    def _mac(self, kind: str, value: str) -> bytes:
        return hmac.digest(self.key, f"{kind}:{value}".encode("utf-8", "surrogateescape"), "sha256")

    def pseudonym(self, kind: str, value: str) -> str:
        """A short upper-case pseudonym of ``value`` (``PAT-`` + 16 base32 characters for patients).

        >>> k = DeidKeys(b"k" * 32)
        >>> k.pseudonym("patient", "123") == k.pseudonym("patient", "123") != k.pseudonym("patient", "124")
        True
        """
        text = base64.b32encode(self._mac(kind, value)).decode()[:16]
        return f"{kind[:3].upper()}-{text}"

    def uid(self, original: str) -> str:
        """The keyed UID of ``original``: ``2.25.`` and a 128-bit integer (PS3.5 B.2).

        >>> u = DeidKeys(b"k" * 32).uid("1.2.3")
        >>> u.startswith("2.25.") and len(u) <= 64 and u == DeidKeys(b"k" * 32).uid("1.2.3")
        True
        """
        return "2.25." + str(int.from_bytes(self._mac("uid", original.strip())[:16], "big"))

    def date_shift(self, patient_id: str) -> DateShift:
        """The patient's offset: 1 to ``max_shift_days`` days back, 1 to 86399 seconds forward.

        Never zero, so no shifted date equals its original.
        """
        mac = self._mac("date-shift", patient_id)
        days = 1 + int.from_bytes(mac[:4], "big") % self.max_shift_days
        seconds = 1 + int.from_bytes(mac[4:8], "big") % 86399
        return DateShift(days, seconds)


def shift_da(value: str, shift: DateShift) -> str | None:
    """Move a DA value (``YYYYMMDD``) by the patient's days; ``None`` when it is not a date.

    >>> shift_da("20240301", DateShift(1, 0))
    '20240229'
    """
    m = _DA.match(value.strip())
    if not m:
        return None
    try:
        moved = date(int(m[1]), int(m[2]), int(m[3])) - timedelta(days=shift.days)
    except ValueError:
        return None
    return moved.strftime("%Y%m%d")


def shift_tm(value: str, shift: DateShift) -> str | None:
    """Move a TM value by the patient's seconds, within the day; ``None`` when it is not a time.

    The precision written is the precision read (``HHMM`` stays four digits).

    >>> shift_tm("2359", DateShift(1, 120))
    '0001'
    """
    m = _TM.match(value.strip().replace(":", ""))
    if not m:
        return None
    h, mi, s = int(m[1]), int(m[2] or 0), int(m[3] or 0)
    if h > 23 or mi > 59 or s > 60:
        return None
    total = (h * 3600 + mi * 60 + min(s, 59) + shift.seconds) % 86400
    text = f"{total // 3600:02d}{total % 3600 // 60:02d}{total % 60:02d}"
    return text[: 2 + 2 * bool(m[2]) + 2 * bool(m[3])] + (m[4] or "")


def shift_da_tm(da: str, tm: str, shift: DateShift) -> tuple[str, str] | None:
    """Move a date and its time as one instant (``StudyDate`` with ``StudyTime``).

    >>> shift_da_tm("20240301", "233000", DateShift(1, 3600))
    ('20240301', '003000')
    """
    d, t = _DA.match(da.strip()), _TM.match(tm.strip().replace(":", ""))
    if not d or not t:
        return None
    try:
        when = datetime(int(d[1]), int(d[2]), int(d[3]), int(t[1]), int(t[2] or 0), min(int(t[3] or 0), 59))
    except ValueError:
        return None
    moved = when + shift.delta
    text = moved.strftime("%H%M%S")
    return moved.strftime("%Y%m%d"), text[: 2 + 2 * bool(t[2]) + 2 * bool(t[3])] + (t[4] or "")


def shift_dt(value: str, shift: DateShift) -> str | None:
    """Move a DT value as one instant, keeping its precision and UTC offset; ``None`` if invalid.

    >>> shift_dt("20240301233000.5+0100", DateShift(1, 3600))
    '20240301003000.5+0100'
    """
    m = _DT.match(value.strip())
    if not m:
        return None
    parts = [int(p) if p else None for p in m.groups()[:6]]
    given = sum(p is not None for p in parts)
    y, mo, d, h, mi, s = (p if p is not None else dflt for p, dflt in zip(parts, (0, 1, 1, 0, 0, 0), strict=True))
    try:
        moved = datetime(y, mo, d, h, mi, min(s, 59)) + (shift.delta if given > 3 else timedelta(days=-shift.days))
    except (ValueError, OverflowError):
        return None
    full = moved.strftime("%Y%m%d%H%M%S")
    return full[: 4 + 2 * (given - 1)] + ((m[7] or "") if given == 6 else "") + (m[8] or "")
