"""PHI-bearing columns sealed before they reach SQL (``core.envelope``), one path for both dialects.

Why columns and not SQLCipher: the same code seals for SQLite and PostgreSQL (PostgreSQL has no
whole-database encryption of its own, and pgcrypto would put the key into SQL text and server
logs); no native library beyond ``cryptography``, which the files already use; and rotation
re-seals values one by one (``state.data_keys_db``) while the bridge keeps running.

Which columns: the raw HL7 messages and their error texts, the rejected heads, the FHIR
resources (context store), the report Bundles (EHR outbox) and the job records (ledger: the
HL7 study context carries the indication and procedure in words). Every column the stores
search by equality holds a keyed hash (``core.identifiers``) already, so sealing costs no
lookup. BLOB columns hold the envelope bytes; TEXT columns hold ``TEXT_MARK`` + its base64, so
no column changes type. Values from before sealing (no mark, no magic) still read as they are.

Which key: a handle gets the keyring its opener bound to it (``bind``: ``open_context``,
``open_ledger``), else the one this process installed last (``install``), else none (clear).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

from core.envelope import EnvelopeError, Keyring, is_sealed
from state.data_keys import keyring_to_json, parse_keyring

__all__ = ["ColumnSealer", "TEXT_MARK", "bind", "install", "key_of", "keyed_path", "path_keys", "sealer_of"]

TEXT_MARK = "pae1:"
"""Starts a sealed TEXT value; JSON and error texts never start so."""

_bound: dict[str, Keyring | None] = {}
_installed: list[Keyring | None] = [None]


def install(ring: Keyring | None) -> None:
    """Make ``ring`` this process's default for handles nobody bound (the EHR outbox)."""
    _installed[0] = ring


def bind(db: Any, ring: Keyring | None) -> None:
    """Seal the values of the store behind ``db`` (by its URL) with ``ring`` (``None``: clear)."""
    _bound[str(db.url)] = ring
    if ring is not None:
        install(ring)


def sealer_of(db: Any) -> ColumnSealer:
    """The sealer for ``db``: its bound keyring, else the installed one."""
    url = str(getattr(db, "url", ""))
    return ColumnSealer(_bound[url] if url in _bound else _installed[0])


class ColumnSealer:
    """Seals and opens single column values; ``ring`` ``None`` writes clear values."""

    __slots__ = ("ring",)

    def __init__(self, ring: Keyring | None) -> None:
        """Args:
        ring: The data keys; ``None``: encryption is off (sealed values then fail to open).
        """
        self.ring = ring

    def text(self, value: str) -> str:
        """A TEXT value as stored."""
        if self.ring is None or not value:
            return value
        return TEXT_MARK + base64.b64encode(self.ring.seal(value.encode("utf-8"))).decode("ascii")

    def open_text(self, value: str) -> str:
        """A stored TEXT value in clear."""
        if not isinstance(value, str) or not value.startswith(TEXT_MARK):
            return value
        return self._open(_b64(value)).decode("utf-8")

    def blob(self, value: bytes | memoryview) -> bytes:
        """A BLOB value as stored."""
        data = bytes(value)
        return data if self.ring is None or not data else self.ring.seal(data)

    def open_blob(self, value: bytes | memoryview) -> bytes:
        """A stored BLOB value in clear."""
        data = bytes(value)
        return self._open(data) if is_sealed(data) else data

    def _open(self, data: bytes) -> bytes:
        if self.ring is None:
            raise EnvelopeError("a sealed value, but storage.encryption is off: no key to open it")
        return self.ring.open(data)


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value[len(TEXT_MARK) :], validate=True)
    except binascii.Error:
        raise EnvelopeError("a sealed TEXT value is not base64") from None


def key_of(value: Any) -> str | None:
    """The key id a stored value is sealed with; ``None``: in clear (or empty)."""
    if isinstance(value, str):
        if not value.startswith(TEXT_MARK):
            return None
        data = _b64(value[: len(TEXT_MARK) + 120])  # the header fits in the first 90 bytes
    else:
        data = bytes(value or b"")
        if not is_sealed(data):
            return None
    return _header_key(data)


def _header_key(data: bytes) -> str:
    if len(data) < 6 or len(data) < 6 + data[5]:
        raise EnvelopeError("sealed envelope header is truncated")
    return data[6 : 6 + data[5]].decode("ascii", "replace")


class _KeyedPath(type(Path())):  # type: ignore[misc]
    """A store path that carries its data keys to a forkserver worker (pickled with it)."""

    keys = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return _keyed, (str(self), self.keys)


def _keyed(path: str, keys: str) -> Path:
    out = _KeyedPath(path)
    out.keys = keys
    return out


def keyed_path(path: str | Path, ring: Keyring | None) -> Path:
    """``path`` carrying ``ring`` (the HL7 parse workers get the store's file so: a forkserver
    child starts from a fresh interpreter, and must seal as the listener does)."""
    return _keyed(str(path), keyring_to_json(ring) if ring else "")


def path_keys(path: Path) -> Keyring | None:
    """The keys ``keyed_path`` put on ``path``; ``None``: a plain path."""
    keys: str = getattr(path, "keys", "")
    return parse_keyring(keys) if keys else None
