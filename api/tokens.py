"""REST routes of API tokens: issue, list, revoke (scope ``admin``; mounted at ``/api/v1/tokens``).

The token text is in the answer to ``POST`` only: the ledger keeps the hash of its secret, so a
lost token cannot be shown again (revoke it and issue another). Every issue and revocation is
audited with the caller's subject (``api_token_created`` / ``api_token_revoked``).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from api.auth import issue_token
from api.problems import Problem
from api.security import context_of, requires
from core.auth import ApiToken, Principal, Scope

__all__ = ["IssuedToken", "TokenRecord", "TokenRequest", "TokenState", "router"]

router = APIRouter()
"""Mounted by ``api.app`` at ``/api/v1/tokens`` (which tags it)."""

_ADMIN = Annotated[Principal, Depends(requires(Scope.ADMIN))]
_PROBLEMS: dict[int | str, dict[str, str]] = {
    401: {"description": "No valid credential (problem+json, with WWW-Authenticate)"},
    403: {"description": "The credential lacks the admin scope (problem+json)"},
    422: {"description": "The request is invalid (problem+json, one entry per field)"},
}


class TokenState(enum.StrEnum):
    """Whether a token works now."""

    ACTIVE = "active"
    """It authenticates."""
    EXPIRED = "expired"
    """Its expiry has passed."""
    REVOKED = "revoked"
    """An administrator revoked it."""


class TokenRequest(BaseModel):
    """A token to issue: for ``expires_in_s`` seconds, or until revoked when it is left out.

    A relative expiry only: an absolute time would be a second way to say the same thing, and
    one that can already be in the past.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$",
        description="Who or what holds it (audited as token:<name>), e.g. pacs-gateway",
    )
    scopes: list[Scope] = Field(min_length=1, description="What it may do; admin implies all, operate implies read")
    expires_in_s: float | None = Field(
        default=None,
        ge=1,
        le=100 * 365 * 86400,
        description="Seconds from now until it stops working (1 s to 100 years)",
    )

    def expiry(self, now: float) -> float | None:
        """The expiry in epoch seconds, or ``None``."""
        return None if self.expires_in_s is None else now + self.expires_in_s


def _at(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


class TokenRecord(BaseModel):
    """An issued token as listed: never its secret."""

    token_id: str = Field(description="Public id: the pab_<token_id>_ part of the token")
    name: str = Field(description="Who or what holds it")
    scopes: list[Scope] = Field(description="What it may do")
    created_at: datetime = Field(description="When it was issued (UTC)")
    expires_at: datetime | None = Field(description="When it stops working; null: until revoked")
    revoked_at: datetime | None = Field(description="When it was revoked; null: not revoked")
    created_by: str = Field(description="Who issued it (a principal's subject)")
    state: TokenState = Field(description="Whether it works now")

    @classmethod
    def of(cls, token: ApiToken, now: float) -> TokenRecord:
        """The listing of ``token`` at ``now``."""
        return cls(
            token_id=token.token_id,
            name=token.name,
            scopes=sorted(token.scopes),
            created_at=datetime.fromtimestamp(token.created_at, UTC),
            expires_at=_at(token.expires_at),
            revoked_at=_at(token.revoked_at),
            created_by=token.created_by,
            state=TokenState(token.state(now)),
        )


class IssuedToken(BaseModel):
    """A newly issued token: the text is shown this once."""

    token: str = Field(description="Send as 'Authorization: Bearer <token>'; it is not stored and not shown again")
    record: TokenRecord = Field(description="The token's record")


@router.post(
    "",
    status_code=201,
    response_model=IssuedToken,
    summary="Issue an API token",
    responses=_PROBLEMS,
)
def create_token(body: TokenRequest, request: Request, principal: _ADMIN) -> IssuedToken:
    """Issue a token; the answer holds its text, which is never shown again."""
    ctx = context_of(request)
    now = ctx.auth.now()
    try:
        text, token = issue_token(ctx.ledger.tokens, body.name, body.scopes, body.expiry(now), principal.subject, now)
    except ValueError as exc:
        raise Problem(422, str(exc), "invalid-request") from None
    return IssuedToken(token=text, record=TokenRecord.of(token, now))


@router.get("", response_model=list[TokenRecord], summary="List API tokens", responses=_PROBLEMS)
def list_tokens(
    request: Request,
    principal: _ADMIN,
    include_revoked: Annotated[bool, Query(description="List revoked tokens too")] = False,
) -> list[TokenRecord]:
    """Issued tokens, oldest first; never their secrets."""
    ctx = context_of(request)
    now = ctx.auth.now()
    return [TokenRecord.of(t, now) for t in ctx.ledger.tokens.list(include_revoked)]


@router.delete(
    "/{token_id}",
    response_model=TokenRecord,
    summary="Revoke an API token",
    responses={**_PROBLEMS, 404: {"description": "No token has this id (problem+json)"}},
)
def revoke_token(token_id: str, request: Request, principal: _ADMIN) -> TokenRecord:
    """Revoke a token (at once on this replica, within the token cache time on the others)."""
    ctx = context_of(request)
    now = ctx.auth.now()
    try:
        token = ctx.ledger.tokens.revoke(token_id, principal.subject, now)
    except KeyError:
        raise Problem(
            404, f"API token {token_id[:40]!r}: unknown; expected the id of an issued token", "unknown-token"
        ) from None
    ctx.auth.forget(token_id)
    return TokenRecord.of(token, now)
