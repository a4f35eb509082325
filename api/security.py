"""FastAPI dependencies: authenticate the caller, check the scope, remember who it was.

Every route but ``/healthz`` and ``/readyz`` depends on ``requires(scope)``; the principal is
kept on ``request.state.principal`` for the request audit (``api.app``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request

from api.context import ApiContext
from core.auth import AuthError, Principal, Scope

__all__ = ["Admin", "Ingester", "Operator", "Reader", "context_of", "requires"]


def context_of(request: Request) -> ApiContext:
    """The replica's ``ApiContext``."""
    ctx: ApiContext = request.app.state.api
    return ctx


def requires(scope: Scope) -> Callable[..., Any]:
    """A dependency that answers 401 without valid credentials and 403 without ``scope``."""

    def dependency(request: Request) -> Principal:
        ctx = context_of(request)
        principal = ctx.auth.authenticate(request.headers.get("authorization"))
        request.state.principal = principal
        if not principal.may(scope):
            raise AuthError(403, f"this credential lacks the {scope.value!r} scope")
        return principal

    dependency.__name__ = f"requires_{scope.value}"
    dependency.scope = scope  # type: ignore[attr-defined]  # read by the OpenAPI description
    return dependency


Ingester = Annotated[Principal, Depends(requires(Scope.INGEST))]
"""A route parameter: the caller, who holds the ``ingest`` scope."""
Reader = Annotated[Principal, Depends(requires(Scope.READ))]
"""A route parameter: the caller, who holds the ``read`` scope."""
Operator = Annotated[Principal, Depends(requires(Scope.OPERATE))]
"""A route parameter: the caller, who holds the ``operate`` scope."""
Admin = Annotated[Principal, Depends(requires(Scope.ADMIN))]
"""A route parameter: the caller, who holds the ``admin`` scope."""
