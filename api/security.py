"""FastAPI dependencies: authenticate the caller, check the scope, remember who it was.

Every route but ``/healthz`` and ``/readyz`` depends on ``requires(scope)``; the principal is
kept on ``request.state.principal`` for the request audit (``api.app``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.context import ApiContext
from core.auth import AuthError, Principal, Scope

__all__ = ["Admin", "Ingester", "Operator", "Reader", "context_of", "requires"]


def context_of(request: Request) -> ApiContext:
    """The replica's ``ApiContext``."""
    ctx: ApiContext = request.app.state.api
    return ctx


_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API token (pab_...) or an OIDC JWT; each operation lists the scope it needs",
)
"""The security scheme in the OpenAPI document (authentication itself is ``ctx.auth``)."""


def requires(scope: Scope) -> Callable[..., Any]:
    """A dependency that answers 401 without valid credentials and 403 without ``scope``; the
    OpenAPI document lists the scope as the operation's security requirement."""

    def dependency(
        request: Request,
        _documented: HTTPAuthorizationCredentials | None = Security(_BEARER, scopes=[scope.value]),  # noqa: B008
    ) -> Principal:
        ctx = context_of(request)
        principal = ctx.auth.authenticate(request.headers.get("authorization"))
        request.state.principal = principal
        if not principal.may(scope):
            raise AuthError(403, f"this credential lacks the {scope.value!r} scope")
        return principal

    dependency.__name__ = f"requires_{scope.value}"
    return dependency


Ingester = Annotated[Principal, Depends(requires(Scope.INGEST))]
"""A route parameter: the caller, who holds the ``ingest`` scope."""
Reader = Annotated[Principal, Depends(requires(Scope.READ))]
"""A route parameter: the caller, who holds the ``read`` scope."""
Operator = Annotated[Principal, Depends(requires(Scope.OPERATE))]
"""A route parameter: the caller, who holds the ``operate`` scope."""
Admin = Annotated[Principal, Depends(requires(Scope.ADMIN))]
"""A route parameter: the caller, who holds the ``admin`` scope."""
