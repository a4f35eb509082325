"""RFC 9457 problem details: every error the API answers is ``application/problem+json``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.auth import AuthError
from core.errors import (
    AccessDenied,
    ConfigError,
    DependencyUnavailable,
    OutOfResources,
    PacsAIError,
    RejectedInput,
)

__all__ = ["PROBLEM_JSON", "Problem", "install_problem_handlers", "problem_response"]

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}


class Problem(Exception):
    """An error a route answers on purpose.

    Args:
        status: The HTTP status.
        detail: What went wrong, for a person (never PHI, never a secret).
        kind: A short slug; the problem ``type`` is ``urn:pacsai:problem:<kind>``.
        extra: More members of the problem object (e.g. ``field``).
    """

    def __init__(self, status: int, detail: str, kind: str = "", **extra: Any) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.kind = kind or _TITLES.get(status, "error").lower().replace(" ", "-")
        self.extra = extra


def problem_response(
    status: int, detail: str, kind: str = "", instance: str = "", headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """A problem+json response."""
    body = {
        "type": f"urn:pacsai:problem:{kind or _TITLES.get(status, 'error').lower().replace(' ', '-')}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        **({"instance": instance} if instance else {}),
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error as a problem detail; a 5xx is logged with its traceback, never echoed."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, exc.kind, request.url.path, **exc.extra)

    @app.exception_handler(AuthError)
    async def _auth(request: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Bearer realm="pacsai"'} if exc.status == 401 else None
        kind = "unauthenticated" if exc.status == 401 else "forbidden"
        return problem_response(exc.status, exc.detail, kind, request.url.path, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail), "", request.url.path, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")), "msg": e["msg"]}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['msg']}" for e in errors)
        return problem_response(422, detail, "invalid-request", request.url.path, errors=errors)

    @app.exception_handler(PacsAIError)
    async def _domain(request: Request, exc: PacsAIError) -> JSONResponse:
        status, kind = _status_of(exc)
        if status >= 500:
            logger.warning("%s %s: %s", request.method, request.url.path, type(exc).__name__)
        return problem_response(status, str(exc), kind, request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if await _client_gone(request):  # e.g. a reader closed the event stream: nothing failed
            logger.info("%s %s: the client went away (%s)", request.method, request.url.path, type(exc).__name__)
            return problem_response(499, "the client closed the request", "client-closed", request.url.path)
        logger.exception("%s %s failed unexpectedly", request.method, request.url.path)
        return problem_response(500, f"internal error ({type(exc).__name__})", "internal", request.url.path)


async def _client_gone(request: Request) -> bool:
    """Whether the client disconnected (a long-lived response it stopped reading ends in an error)."""
    try:
        return await request.is_disconnected()
    except Exception:  # the server gave no way to tell
        return False


def _status_of(exc: PacsAIError) -> tuple[int, str]:
    if isinstance(exc, AccessDenied):
        return 403, "forbidden"
    if isinstance(exc, ConfigError):
        return 400, "invalid-argument"
    if isinstance(exc, OutOfResources):
        return 507, "out-of-resources"
    if isinstance(exc, DependencyUnavailable):
        return 503, "dependency-unavailable"
    if isinstance(exc, RejectedInput):
        return 400, "rejected-input"
    return 500, "internal"
