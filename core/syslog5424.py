"""RFC 5424 syslog messages and RFC 5425 octet-counting frames, as bytes.

Audit messages leave the bridge as ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID
[STRUCTURED-DATA] BOM MSG`` (RFC 5424 section 6), framed ``LEN SP SYSLOG-MSG`` (RFC 5425
section 4.3) on a TLS stream. The message is UTF-8 XML, so it starts with the BOM that marks
it as UTF-8 (RFC 5424 6.4); IHE ATNA names the format in MSGID (``IHE+RFC-3881``).

Pure: the caller gives the time, the host name and the process id.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "BOM",
    "FACILITY_AUTHPRIV",
    "NILVALUE",
    "SdElement",
    "format_message",
    "octet_frame",
    "split_frames",
    "timestamp",
]

BOM = b"\xef\xbb\xbf"
"""Marks MSG as UTF-8 (RFC 5424 6.4)."""
NILVALUE = "-"
FACILITY_AUTHPRIV = 10
"""security/authorization messages (RFC 5424 table 1); IHE ATNA sends audit records here."""
_PRINTUSASCII = re.compile(r"^[!-~]+$")
_SD_NAME = re.compile(r"^[!#-<>-\\^-~]{1,32}$")
"""SD-NAME: printable US-ASCII except '=', ']', '"' and space, 1 to 32 characters."""
_MAX_FRAME_DIGITS = 10
"""Longest MSG-LEN accepted when splitting frames (a corrupt stream is not read forever)."""


@dataclass(frozen=True, slots=True)
class SdElement:
    """One SD-ELEMENT: ``[id name="value" ...]`` (RFC 5424 6.3).

    Attributes:
        sd_id: ``name@<private enterprise number>`` for elements not registered with IANA.
        params: ``(name, value)`` pairs, in order.
    """

    sd_id: str
    params: tuple[tuple[str, str], ...]

    def render(self) -> str:
        """The element as text, each value escaped (``"``, ``\\`` and ``]`` get a backslash)."""
        _check_token("SD-ID", self.sd_id, _SD_NAME)
        parts = [self.sd_id]
        for name, value in self.params:
            _check_token("PARAM-NAME", name, _SD_NAME)
            escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
            parts.append(f'{name}="{escaped}"')
        return "[" + " ".join(parts) + "]"


def _check_token(what: str, value: str, pattern: re.Pattern[str]) -> None:
    if not pattern.match(value):
        raise ValueError(f"syslog {what}: got {value!r}; expected printable US-ASCII without space")


def _header_field(what: str, value: str, limit: int) -> str:
    """A header field, or the NILVALUE when empty; refused when it would break the header."""
    if not value:
        return NILVALUE
    if len(value) > limit or not _PRINTUSASCII.match(value):
        raise ValueError(f"syslog {what}: got {value[:60]!r}; expected 1-{limit} printable US-ASCII characters")
    return value


def timestamp(at: float) -> str:
    """RFC 3339 UTC with microseconds (RFC 5424 6.2.3: at most 6 fraction digits)."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_message(
    *,
    facility: int,
    severity: int,
    at: float,
    hostname: str,
    app_name: str,
    procid: str,
    msgid: str,
    structured: Sequence[SdElement] = (),
    message: bytes = b"",
) -> bytes:
    """One RFC 5424 message; ``message`` (UTF-8) follows the BOM.

    Raises:
        ValueError: A facility or severity out of range, a header field too long or with a
            space or a non-ASCII character, a bad SD-ID or PARAM-NAME.
    """
    if not 0 <= facility <= 23 or not 0 <= severity <= 7:
        raise ValueError(f"syslog PRI: got facility {facility}, severity {severity}; expected 0-23 and 0-7")
    header = " ".join(
        (
            f"<{facility * 8 + severity}>1",
            timestamp(at),
            _header_field("HOSTNAME", hostname, 255),
            _header_field("APP-NAME", app_name, 48),
            _header_field("PROCID", procid, 128),
            _header_field("MSGID", msgid, 32),
            "".join(e.render() for e in structured) or NILVALUE,
        )
    )
    return header.encode("ascii") + (b" " + BOM + message if message else b"")


def octet_frame(message: bytes) -> bytes:
    """``MSG-LEN SP SYSLOG-MSG`` (RFC 5425 4.3): the length in octets, not characters."""
    return str(len(message)).encode("ascii") + b" " + message


def split_frames(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Split octet-counted frames off the front of ``buffer``; return them and the rest.

    Raises:
        ValueError: The stream does not start with ``DIGITS SP`` (not octet-counted).
    """
    frames: list[bytes] = []
    while buffer:
        space = buffer.find(b" ", 0, _MAX_FRAME_DIGITS + 1)
        if space < 0:
            if len(buffer) > _MAX_FRAME_DIGITS or not buffer.isdigit():
                raise ValueError(f"syslog frame: got {buffer[:20]!r}; expected MSG-LEN SP SYSLOG-MSG")
            break
        digits = buffer[:space]
        if not digits.isdigit() or digits.startswith(b"0"):
            raise ValueError(f"syslog frame: got length {digits[:20]!r}; expected a positive decimal")
        end = space + 1 + int(digits)
        if len(buffer) < end:
            break
        frames.append(buffer[space + 1 : end])
        buffer = buffer[end:]
    return frames, buffer
