"""The FastAPI application: health checks, REST operations, DICOMweb; OpenAPI 3.1.

``create_app(ctx)`` builds it over one replica's ``ApiContext``. Everything but ``/healthz`` and
``/readyz`` needs credentials (``api.security.requires``); every request is audited with who
made it (``api.audit``); every error is an RFC 9457 problem detail (``api.problems``).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from api import dicomweb, ops, tokens
from api.context import ApiContext
from api.problems import install_problem_handlers, problem_response

__all__ = ["API_VERSION", "create_app"]

API_VERSION = "1.0.0"


def create_app(ctx: ApiContext) -> FastAPI:
    """The application over one replica's services."""
    app = FastAPI(
        title="PACS-AI Bridge",
        version=API_VERSION,
        description="REST operations and DICOMweb (STOW-RS in; QIDO-RS / WADO-RS of our results). "
        "Authenticate with `Authorization: Bearer <API token or OIDC JWT>`.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.api = ctx
    install_problem_handlers(app)

    @app.middleware("http")
    async def audit_requests(request: Request, call_next: Any) -> Response:
        started = time.monotonic()
        response: Response = await call_next(request)
        principal = getattr(request.state, "principal", None)
        if request.url.path not in ("/healthz", "/readyz"):
            ctx.audit.record(
                principal.subject if principal is not None else "anonymous",
                request.method,
                request.url.path,
                response.status_code,
                time.monotonic() - started,
            )
        return response

    @app.get("/healthz", tags=["health"], summary="The API process answers (no credentials)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="The ledger answers and the API can take work (no credentials)",
        responses={503: {"description": "Not ready", "content": {"application/problem+json": {}}}},
    )
    def readyz() -> JSONResponse:
        problem = ctx.operations.readiness()
        if problem:
            return problem_response(503, problem, "not-ready", "/readyz")
        return JSONResponse({"status": "ready"})

    app.include_router(ops.router, prefix="/api/v1")
    app.include_router(tokens.router, prefix="/api/v1/tokens", tags=["tokens"])
    app.include_router(dicomweb.router, prefix="/dicomweb", tags=["dicomweb"])
    return app
