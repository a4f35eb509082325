"""Who may call the API, and what they may do: scopes, principals, API tokens (pure).

Verification of secrets against the stored hashes and of OIDC JWTs lives in ``api.auth``;
the token table in ``state.ledger.tokens``. This module holds the vocabulary and the rules.

An API token is ``pab_<token_id>_<secret>``: ``token_id`` is 16 lowercase hex digits (public,
the key of its ledger row, fine to log), ``secret`` is 32 random bytes in unpadded base64url
(43 characters). Only the SHA-256 of the secret is stored: the secret has 256 bits of entropy,
so a slow password hash would add nothing (GitHub and others store token hashes the same way).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ApiToken",
    "AuthError",
    "Principal",
    "Scope",
    "TOKEN_ID_HEX",
    "TOKEN_PREFIX",
    "TOKEN_SECRET_BYTES",
    "check_token",
    "format_token",
    "hash_secret",
    "implied",
    "parse_scopes",
    "parse_token",
]


class Scope(enum.StrEnum):
    """What a credential may do. ``admin`` implies every scope; ``operate`` and ``review`` imply
    ``read``."""

    INGEST = "ingest"
    """Send studies (STOW-RS)."""
    READ = "read"
    """Read status, jobs, quarantine, audit and results (QIDO-RS / WADO-RS)."""
    OPERATE = "operate"
    """Act on the pipeline: quarantine release/discard, replay, AI switches, models."""
    ADMIN = "admin"
    """Everything, including issuing and revoking API tokens."""
    REVIEW = "review"
    """Review AI results as a reader: agree, disagree, override (issue 12); implies ``read``."""


_IMPLIES: dict[Scope, frozenset[Scope]] = {
    Scope.INGEST: frozenset({Scope.INGEST}),
    Scope.READ: frozenset({Scope.READ}),
    Scope.OPERATE: frozenset({Scope.OPERATE, Scope.READ}),
    Scope.REVIEW: frozenset({Scope.REVIEW, Scope.READ}),
    Scope.ADMIN: frozenset(Scope),
}

TOKEN_PREFIX = "pab_"
"""What every API token starts with (so a leaked one is recognisable, e.g. by secret scanners)."""
TOKEN_ID_HEX = 16
"""Hex digits of a token id (64 random bits: unique, and not a secret)."""
TOKEN_SECRET_BYTES = 32
"""Random bytes of a token secret (256 bits)."""

_TOKEN_ID = re.compile(rf"[0-9a-f]{{{TOKEN_ID_HEX}}}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes in unpadded base64url
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_NO_MATCH = hashlib.sha256(b"no such token").hexdigest()


def implied(scopes: frozenset[Scope]) -> frozenset[Scope]:
    """Every scope a set of granted scopes carries.

    >>> sorted(implied(frozenset({Scope.OPERATE})))
    [<Scope.OPERATE: 'operate'>, <Scope.READ: 'read'>]
    """
    return frozenset(s for g in scopes for s in _IMPLIES[g])


def parse_scopes(values: str | Iterable[str], strict: bool) -> frozenset[Scope]:
    """Scopes from their names: a space-separated string (OAuth 2.0 ``scope``) or a list.

    Args:
        values: The names.
        strict: Issuing a token: an unknown name is an error. Reading a JWT: an identity
            provider grants scopes of other APIs too, so unknown names are ignored.

    Raises:
        ValueError: ``strict`` and a name is not a scope.

    >>> sorted(parse_scopes("openid read operate", strict=False))
    [<Scope.OPERATE: 'operate'>, <Scope.READ: 'read'>]
    >>> parse_scopes(["read", "root"], strict=True)
    Traceback (most recent call last):
    ...
    ValueError: scopes: got unknown 'root'; expected some of ingest, read, operate, admin, review
    """
    names = values.split() if isinstance(values, str) else [str(v) for v in values]
    known = {s.value: s for s in Scope}
    unknown = [n for n in names if n not in known]
    if strict and unknown:
        got = ", ".join(repr(n) for n in unknown)
        raise ValueError(f"scopes: got unknown {got}; expected some of {', '.join(known)}")
    return frozenset(known[n] for n in names if n in known)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: who (audited) and what they may do."""

    subject: str
    """``token:<name>`` for an API token, ``oidc:<sub>`` for a JWT; never the secret."""
    scopes: frozenset[Scope]
    via: str = "token"
    """``token`` or ``oidc``."""
    credential_id: str = ""
    """The API token's id (public, for the audit: two tokens may share a name); ``''`` for OIDC."""
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """The verified JWT's claims (OIDC: the alert policy reads roles from them); ``{}`` for tokens."""

    def may(self, scope: Scope) -> bool:
        """Whether this principal holds ``scope`` (directly or implied)."""
        return scope in implied(self.scopes)


class AuthError(Exception):
    """A request is not authenticated (401) or not allowed (403).

    Args:
        status: 401 or 403.
        detail: What is wrong, for the problem detail (never echoes a secret).
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ApiToken:
    """An issued API token as the ledger keeps it (its secret's hash is kept apart, never here).

    Raises:
        ValueError: The id, name or expiry break the rules below.
    """

    token_id: str
    """16 lowercase hex digits; public (the ``pab_<token_id>_`` part of the token)."""
    name: str
    """Who or what holds it (``pacs-gateway``): letters, digits, ``_.@-``, at most 64."""
    scopes: frozenset[Scope]
    """What it may do (none: it authenticates but every route answers 403; the route that issues
    tokens asks for at least one)."""
    created_at: float
    """When it was issued (epoch seconds)."""
    expires_at: float | None
    """When it stops working (epoch seconds); ``None``: until revoked."""
    revoked_at: float | None
    """When it was revoked; ``None`` while not."""
    created_by: str
    """The subject of the principal that issued it."""

    def __post_init__(self) -> None:
        if not _TOKEN_ID.fullmatch(self.token_id):
            raise ValueError(f"token_id: got {self.token_id!r}; expected {TOKEN_ID_HEX} lowercase hex digits")
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"name: got {self.name!r}; expected 1-64 of [A-Za-z0-9_.@-], starting alphanumeric")
        if self.expires_at is not None and self.expires_at <= self.created_at:
            raise ValueError(f"expires_at: got {self.expires_at}; expected after created_at {self.created_at}")

    @property
    def subject(self) -> str:
        """The principal's subject: ``token:<name>``."""
        return f"token:{self.name}"

    def state(self, now: float) -> str:
        """``revoked``, ``expired`` or ``active`` at ``now``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"


def format_token(token_id: str, secret: str) -> str:
    """The token text a client sends as ``Authorization: Bearer <text>``.

    >>> format_token("0123456789abcdef", "s" * 43)[:21]
    'pab_0123456789abcdef_'
    """
    return f"{TOKEN_PREFIX}{token_id}_{secret}"


def parse_token(text: str) -> tuple[str, str]:
    """Split token text into ``(token_id, secret)``.

    Raises:
        AuthError: 401, the text is not ``pab_<16 hex>_<43 base64url>`` (the detail never
            repeats the text).

    >>> parse_token("pab_0123456789abcdef_" + "A" * 43)[0]
    '0123456789abcdef'
    >>> parse_token("pab_xyz")
    Traceback (most recent call last):
    ...
    core.auth.AuthError: (401, 'malformed API token; expected pab_<16 hex digits>_<43 base64url characters>')
    """
    body = text[len(TOKEN_PREFIX) :] if text.startswith(TOKEN_PREFIX) else ""
    token_id, _, secret = body.partition("_")
    if not (_TOKEN_ID.fullmatch(token_id) and _SECRET.fullmatch(secret)):
        raise AuthError(401, "malformed API token; expected pab_<16 hex digits>_<43 base64url characters>")
    return token_id, secret


def hash_secret(secret: str) -> str:
    """The stored form of a token secret: SHA-256, hex.

    >>> len(hash_secret("x" * 43))
    64
    """
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def check_token(found: tuple[ApiToken, str] | None, presented_hash: str, now: float) -> Principal:
    """The principal of a presented API token, or why it is refused.

    Args:
        found: The ledger's record of the token id and its stored secret hash
            (``ApiTokens.get``), ``None`` when the id is unknown.
        presented_hash: ``hash_secret`` of the secret presented.
        now: Epoch seconds.

    Raises:
        AuthError: 401, for an unknown id or a wrong secret (one message for both, so a
            caller learns nothing about which ids exist), a revoked or an expired token.
    """
    record, stored = found if found is not None else (None, _NO_MATCH)
    # Compare even for an unknown id, in constant time, so timing tells nothing either.
    matches = hmac.compare_digest(stored.encode(), presented_hash.encode())
    if record is None or not matches:
        raise AuthError(401, "API token not recognised (unknown token id or wrong secret)")
    state = record.state(now)
    if state == "revoked":
        raise AuthError(401, f"API token {record.token_id} ({record.name}) was revoked")
    if state == "expired":
        at = datetime.fromtimestamp(record.expires_at or 0.0, UTC).isoformat(timespec="seconds")
        raise AuthError(401, f"API token {record.token_id} ({record.name}) expired at {at}")
    return Principal(record.subject, record.scopes, "token", record.token_id)
