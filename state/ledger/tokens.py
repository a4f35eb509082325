"""API tokens: issued, listed and revoked, each change audited in its own transaction.

Only the SHA-256 of a token's secret is stored (``core.auth``); neither the secret nor its hash
ever reaches the audit trail or a log line. Rows are never deleted: a revoked token stays listed
(``include_revoked``) so the audit's ``token:<name>`` subjects keep a record to point at.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from core.audit import AuditEvent
from core.auth import ApiToken, parse_scopes
from core.types import AuditEventType
from state.db import Database, Row, Tx
from state.ledger.audit import append_events

__all__ = ["ApiTokens"]

_COLUMNS = "token_id, name, scopes, secret_hash, created_at, created_by, expires_at, revoked_at"


def _token(row: Row) -> ApiToken:
    return ApiToken(
        token_id=row["token_id"],
        name=row["name"],
        scopes=parse_scopes(row["scopes"], strict=True),
        created_at=float(row["created_at"]),
        expires_at=None if row["expires_at"] is None else float(row["expires_at"]),
        revoked_at=None if row["revoked_at"] is None else float(row["revoked_at"]),
        created_by=row["created_by"],
    )


def _detail(token: ApiToken) -> dict[str, Any]:
    """What the audit keeps of a token: never its secret or the secret's hash."""
    return {
        "token_id": token.token_id,
        "name": token.name,
        "scopes": sorted(s.value for s in token.scopes),
        "expires_at": token.expires_at,
    }


class ApiTokens:
    """The ``api_tokens`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, record: ApiToken, secret_hash: str, actor: str, now: float) -> None:
        """Store a newly issued token and audit it (``api_token_created``).

        Args:
            record: The token (``created_by`` is normally ``actor``).
            secret_hash: ``core.auth.hash_secret`` of its secret.
            actor: The subject that issued it.
            now: Epoch seconds.

        Raises:
            ValueError: ``secret_hash`` is not a SHA-256 hex digest.
        """
        if len(secret_hash) != 64 or any(c not in "0123456789abcdef" for c in secret_hash):
            raise ValueError("secret_hash: expected 64 lowercase hex digits (core.auth.hash_secret)")
        scopes = " ".join(sorted(s.value for s in record.scopes))

        def insert(tx: Tx) -> None:
            tx.execute(
                f"INSERT INTO api_tokens ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                (
                    record.token_id,
                    record.name,
                    scopes,
                    secret_hash,
                    record.created_at,
                    record.created_by,
                    record.expires_at,
                    record.revoked_at,
                ),
            )
            append_events(tx, [AuditEvent(AuditEventType.API_TOKEN_CREATED, actor, detail=_detail(record))], now)

        self._db.run(insert)

    def get(self, token_id: str) -> tuple[ApiToken, str] | None:
        """The token and its stored secret hash, or ``None`` for an unknown id."""
        with self._db.read() as tx:
            row = tx.one(f"SELECT {_COLUMNS} FROM api_tokens WHERE token_id = ?", (token_id,))
        return None if row is None else (_token(row), str(row["secret_hash"]))

    def list(self, include_revoked: bool = False) -> tuple[ApiToken, ...]:
        """Issued tokens, oldest first (expired ones included: they show why a caller fails)."""
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        with self._db.read() as tx:
            rows = tx.all(f"SELECT {_COLUMNS} FROM api_tokens{where} ORDER BY created_at, token_id")
        return tuple(_token(r) for r in rows)

    def revoke(self, token_id: str, actor: str, now: float) -> ApiToken:
        """Revoke a token and audit it (``api_token_revoked``); the token as it is now.

        Revoking a revoked token changes nothing and audits nothing (it stays revoked since the
        first time). Callers that cache tokens see the change once their cache entry lapses
        (``api.auth.Authenticator``).

        Raises:
            KeyError: No token has this id.
        """

        def revoke(tx: Tx) -> ApiToken:
            row = tx.one(f"SELECT {_COLUMNS} FROM api_tokens WHERE token_id = ?{tx.for_update}", (token_id,))
            if row is None:
                raise KeyError(f"API token {token_id!r}: unknown; expected the id of an issued token")
            token = _token(row)
            if token.revoked_at is not None:
                return token
            tx.execute(
                "UPDATE api_tokens SET revoked_at = ?, revoked_by = ? WHERE token_id = ?", (now, actor, token_id)
            )
            append_events(tx, [AuditEvent(AuditEventType.API_TOKEN_REVOKED, actor, detail=_detail(token))], now)
            return replace(token, revoked_at=now)

        return self._db.run(revoke)
