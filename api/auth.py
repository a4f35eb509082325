"""Who is calling: API tokens (checked against the ledger) and OIDC bearer JWTs (PyJWT).

``Authorization: Bearer pab_<token_id>_<secret>`` is an API token (``core.auth``); any other
bearer value is a JWT from the hospital's identity provider when ``api.oidc`` is configured.

**Revocation delay.** Each replica caches token records (not verdicts) for ``cache_s`` seconds
(default 5), so a busy API does not read the ledger on every request: a token revoked through
another replica (or the CLI) keeps working on this one for at most ``cache_s`` seconds; one
revoked through this replica's route stops at once (``forget``). Expiry is checked against the
clock on every request, cached or not.

**JWTs.** Only the configured asymmetric algorithms verify (``none`` and ``HS*`` are refused
here even if a config slipped them through: with a public key as HMAC secret anyone could sign,
the algorithm-confusion attack), and each JWKS key verifies only with the one algorithm it is
bound to: its ``alg`` member, or what PyJWT infers from its type (RSA: RS256, EC P-256: ES256),
so an identity provider that signs with PS256 must publish ``"alg": "PS256"``. ``iss``, ``aud``
and ``exp`` are required; ``exp`` and ``nbf`` are checked with ``leeway_s`` against the system
clock (PyJWT's). Keys come from ``jwks_file`` (read once, at start: restart to rotate) or from
``jwks_url`` over https (cached 5 minutes; an unknown ``kid`` refetches at most every 30 s).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jwt
from jwt import PyJWK, PyJWKClient, PyJWKSet

from core.api_config import OidcConfig
from core.auth import (
    TOKEN_ID_HEX,
    TOKEN_PREFIX,
    TOKEN_SECRET_BYTES,
    ApiToken,
    AuthError,
    Principal,
    Scope,
    check_token,
    format_token,
    hash_secret,
    parse_scopes,
    parse_token,
)
from core.errors import ConfigError, DependencyUnavailable
from state.ledger.tokens import ApiTokens

__all__ = ["Authenticator", "OidcVerifier", "issue_token"]

logger = logging.getLogger(__name__)

_CACHE_MAX = 4096
"""Most token records one replica caches (unknown ids included; oldest dropped first)."""
_JWKS_LIFESPAN_S = 300.0
_JWKS_COOLDOWN_S = 30.0
_JWKS_TIMEOUT_S = 10.0
_REQUIRED_CLAIMS = ["exp", "iss", "aud"]
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,19}")  # RFC 9110 token, short
_JWT_ERRORS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "JWT expired (exp)"),
    (jwt.ImmatureSignatureError, "JWT not valid yet (nbf or iat in the future)"),
    (jwt.InvalidAudienceError, "JWT audience (aud) does not name this API"),
    (jwt.InvalidIssuerError, "JWT issuer (iss) is not the configured identity provider"),
    (jwt.InvalidSignatureError, "JWT signature does not verify"),
    (jwt.InvalidAlgorithmError, "JWT alg does not match its signing key"),
)


def _shown(value: object) -> str:
    """A caller-supplied header value for a problem detail: short, never the credential."""
    return repr(value)[:40]


def _refused_algorithm(name: str) -> bool:
    return name.lower() == "none" or name.upper().startswith("HS")


class OidcVerifier:
    """Verify OIDC bearer JWTs against the issuer's keys.

    Args:
        cfg: Issuer, audience, key source, algorithms and claims.
        ssl_context: Trust for ``jwks_url`` (``None``: the system's CAs, TLS 1.2 or newer).

    Raises:
        ConfigError: A refused algorithm is configured, or ``jwks_file`` cannot be read as a
            JWKS with usable keys.
    """

    def __init__(self, cfg: OidcConfig, ssl_context: ssl.SSLContext | None = None) -> None:
        refused = [a for a in cfg.algorithms if _refused_algorithm(a)]
        if refused:
            raise ConfigError("api.oidc", [f"algorithms: got {refused}; expected RS*, ES* or PS* only"])
        self._cfg = cfg
        self._keys: list[PyJWK] = []
        self._client: PyJWKClient | None = None
        if cfg.jwks_file is not None:
            self._keys = _read_jwks(cfg.jwks_file)
        else:
            if ssl_context is None:
                ssl_context = ssl.create_default_context()
                ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
            self._client = PyJWKClient(
                str(cfg.jwks_url),
                cache_jwk_set=True,
                lifespan=_JWKS_LIFESPAN_S,
                timeout=_JWKS_TIMEOUT_S,
                ssl_context=ssl_context,
                cooldown_duration=_JWKS_COOLDOWN_S,
            )

    def principal(self, token: str) -> Principal:
        """The principal a JWT names: ``oidc:<subject>`` with the scopes it grants.

        Raises:
            AuthError: 401, the JWT is malformed, uses an algorithm not accepted, names an
                unknown key, or fails signature, ``iss``, ``aud``, ``exp`` or ``nbf``.
            DependencyUnavailable: The JWKS URL cannot be fetched now (503).
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(401, "bearer token is neither an API token (pab_...) nor a well-formed JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or _refused_algorithm(alg) or alg not in self._cfg.algorithms:
            expected = ", ".join(self._cfg.algorithms)
            raise AuthError(401, f"JWT alg: got {_shown(alg)}; expected one of {expected}")
        claims = self._verified_claims(token, self._key(header.get("kid")))
        return self._principal_of(claims)

    def _verified_claims(self, token: str, key: PyJWK) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(self._cfg.algorithms),
                audience=self._cfg.audience,
                issuer=self._cfg.issuer,
                leeway=self._cfg.leeway_s,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(401, f"JWT lacks the required {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            detail = next((d for kind, d in _JWT_ERRORS if isinstance(exc, kind)), None)
            raise AuthError(401, detail or f"JWT invalid ({type(exc).__name__})") from None
        return claims

    def _principal_of(self, claims: dict[str, Any]) -> Principal:
        subject = claims.get(self._cfg.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise AuthError(401, f"JWT lacks a {self._cfg.subject_claim!r} claim naming the caller")
        granted = claims.get(self._cfg.scopes_claim, "")
        if isinstance(granted, list):
            scopes = parse_scopes([g for g in granted if isinstance(g, str)], strict=False)
        else:
            scopes = parse_scopes(granted if isinstance(granted, str) else "", strict=False)
        return Principal(f"oidc:{subject}", scopes, "oidc", claims=dict(claims))

    def _key(self, kid: object) -> PyJWK:
        """The signing key a JWT names by ``kid`` (or the only one, when it names none)."""
        if kid is not None and not isinstance(kid, str):
            raise AuthError(401, f"JWT kid: got {_shown(kid)}; expected a string")
        if self._client is None:
            keys = self._keys
        else:
            keys = self._fetched(kid)
        if kid is None:
            if len(keys) == 1:
                return keys[0]
            raise AuthError(401, "JWT has no kid and the issuer publishes several keys; expected a kid")
        for key in keys:
            if key.key_id == kid:
                return key
        raise AuthError(401, f"JWT kid: got {_shown(kid)}; the issuer's JWKS has no such signing key")

    def _fetched(self, kid: str | None) -> list[PyJWK]:
        assert self._client is not None
        try:
            if kid is None:
                return _signing_keys(self._client.get_jwk_set())
            return [self._client.get_signing_key(kid)]  # refetches an unknown kid (cooldown)
        except jwt.PyJWKClientConnectionError as exc:
            logger.warning("JWKS of %s cannot be fetched: %s", self._cfg.issuer, type(exc.__cause__).__name__)
            raise DependencyUnavailable("oidc-jwks", "the identity provider's JWKS cannot be fetched") from None
        except jwt.PyJWKClientError:
            return []
        except jwt.PyJWKSetError:
            raise DependencyUnavailable("oidc-jwks", "the identity provider's JWKS has no usable keys") from None


def _signing_keys(keys: Iterable[PyJWK]) -> list[PyJWK]:
    return [k for k in keys if k.public_key_use in ("sig", None)]


def _read_jwks(path: str) -> list[PyJWK]:
    try:
        keys = _signing_keys(PyJWKSet.from_dict(json.loads(Path(path).read_text(encoding="utf-8"))))
    except (OSError, ValueError, jwt.PyJWTError) as exc:
        raise ConfigError("api.oidc", [f"jwks_file: {path}: {type(exc).__name__}: {exc}"]) from None
    if not keys:
        raise ConfigError("api.oidc", [f"jwks_file: {path}: no signing keys (use 'sig')"])
    return keys


class _TokenCache:
    """Token records by id for ``ttl_s`` seconds (unknown ids too), at most ``_CACHE_MAX``."""

    def __init__(self, ttl_s: float, now: Callable[[], float]) -> None:
        self._ttl_s = ttl_s
        self._now = now
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, tuple[ApiToken, str] | None]] = OrderedDict()

    def get(self, token_id: str, load: Callable[[str], tuple[ApiToken, str] | None]) -> tuple[ApiToken, str] | None:
        now = self._now()
        with self._lock:
            entry = self._entries.get(token_id)
            if entry is not None and now - entry[0] < self._ttl_s:
                return entry[1]
        found = load(token_id)  # outside the lock: one slow read must not hold up the others
        if self._ttl_s > 0:
            with self._lock:
                self._entries[token_id] = (now, found)
                self._entries.move_to_end(token_id)
                while len(self._entries) > _CACHE_MAX:
                    self._entries.popitem(last=False)
        return found

    def forget(self, token_id: str) -> None:
        with self._lock:
            self._entries.pop(token_id, None)


class Authenticator:
    """Turn an ``Authorization`` header into a ``Principal`` (one per API replica; thread-safe).

    Args:
        tokens: The ledger's API tokens.
        oidc: Accept OIDC JWTs too (``None``: API tokens only).
        now: The clock (epoch seconds) for token expiry and the cache.
        cache_s: How long a token record is reused before the ledger is read again; a
            revocation elsewhere takes effect here within this time (0: read every time).
        jwks_ssl_context: Trust for ``oidc.jwks_url`` (``None``: the system's CAs).

    Attributes:
        now: The clock it was given (the token routes stamp records with it).

    Raises:
        ConfigError: The OIDC config cannot be used (``OidcVerifier``).
    """

    def __init__(
        self,
        tokens: ApiTokens,
        oidc: OidcConfig | None,
        now: Callable[[], float] = time.time,
        cache_s: float = 5.0,
        jwks_ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.now = now
        self._tokens = tokens
        self._cache = _TokenCache(cache_s, now)
        self._oidc = None if oidc is None else OidcVerifier(oidc, jwks_ssl_context)

    def authenticate(self, authorization_header: str | None) -> Principal:
        """The caller named by ``Authorization: Bearer <API token or JWT>`` (RFC 6750 2.1).

        Raises:
            AuthError: 401, the header is missing, not ``Bearer``, or its credential is
                malformed, unknown, wrong, revoked, expired or (a JWT) invalid.
            DependencyUnavailable: The OIDC JWKS URL cannot be fetched now (503).
        """
        if not authorization_header:
            raise AuthError(401, "missing Authorization header; expected 'Bearer <API token or JWT>'")
        scheme, _, credential = authorization_header.strip().partition(" ")
        if scheme.lower() != "bearer":
            # Name the scheme only when it looks like one: a bare credential must not be echoed.
            got = _shown(scheme) if credential and _SCHEME.fullmatch(scheme) else "no scheme"
            raise AuthError(401, f"Authorization scheme: got {got}; expected 'Bearer <API token or JWT>'")
        credential = credential.strip()
        if not credential:
            raise AuthError(401, "Authorization: Bearer without a credential; expected an API token or JWT")
        if credential.startswith(TOKEN_PREFIX):
            token_id, secret = parse_token(credential)
            return check_token(self._cache.get(token_id, self._tokens.get), hash_secret(secret), self.now())
        if self._oidc is None:
            raise AuthError(401, "bearer token is not an API token (pab_...) and OIDC is not configured")
        return self._oidc.principal(credential)

    def forget(self, token_id: str) -> None:
        """Drop a cached token record (this replica revoked it: the change applies at once)."""
        self._cache.forget(token_id)


def issue_token(
    tokens: ApiTokens,
    name: str,
    scopes: Iterable[Scope | str],
    expires_at: float | None,
    actor: str,
    now: float,
) -> tuple[str, ApiToken]:
    """Issue an API token: store its record and secret hash, audit it, return the text once.

    Args:
        tokens: The ledger's API tokens.
        name: Who or what holds it (``token:<name>`` in the audit).
        scopes: What it may do (names or ``Scope``s).
        expires_at: When it stops working (epoch seconds); ``None``: until revoked.
        actor: The subject that issues it.
        now: Epoch seconds.

    Returns:
        The token text (``pab_<id>_<secret>``; not stored anywhere, show it once) and its record.

    Raises:
        ValueError: An unknown scope, a bad name, or an expiry not after ``now``.
    """
    granted = parse_scopes([str(s) for s in scopes], strict=True)
    record = ApiToken(secrets.token_hex(TOKEN_ID_HEX // 2), name, granted, now, expires_at, None, actor)
    secret = secrets.token_urlsafe(TOKEN_SECRET_BYTES)
    tokens.create(record, hash_secret(secret), actor, now)
    logger.info("API token %s (%s) issued by %s", record.token_id, record.name, actor)
    return format_token(record.token_id, secret), record
