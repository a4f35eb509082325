"""The FastAPI application: health checks, REST operations, DICOMweb; OpenAPI 3.1.

``create_app(ctx)`` builds it over one replica's ``ApiContext``. Everything but ``/healthz``,
``/readyz`` and the review page's static files (``/review/``, ``api.page``) needs credentials
(``api.security.requires``); every request is audited with who made it (``api.audit``); every
error is an RFC 9457 problem detail (``api.problems``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from api import clinical, dicomweb, events, ops, tokens
from api.audit import AuditMiddleware
from api.context import ApiContext
from api.limits import BodyLimit
from api.page import router as page_router
from api.problems import install_problem_handlers, problem_response
from api.success import router as success_router

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
    assert ctx.cfg.api is not None
    app.add_middleware(AuditMiddleware, audit=ctx.audit)
    app.add_middleware(BodyLimit, max_bytes=ctx.cfg.api.max_request_bytes)  # outermost: nothing read

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
    app.include_router(clinical.router, prefix="/api/v1/clinical")
    app.include_router(
        events.router,
        prefix="/api/v1/clinical",
        responses={404: {"description": "Clinical results are not configured (clinical.policy_file)"}},
    )
    app.include_router(page_router)  # /review/: the readers' page (static, public; issue 12)
    app.include_router(success_router, prefix="/api/v1/clinical", tags=["clinical"])
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
    "additionalProperties": True,
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's OpenAPI 3.1 document, made true to what the API answers: every operation with
    a security requirement (the bearer scheme and the scope it needs) documents 401 and 403,
    and every error (FastAPI's own 422 included) is ``application/problem+json``."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if operation.get("security"):
                for status, why in (("401", "No valid credentials"), ("403", "The credential lacks the scope")):
                    operation.setdefault("responses", {}).setdefault(status, {"description": why})
            for status, response in operation.get("responses", {}).items():
                content = response.get("content")
                if status[0] in "45" and (
                    not content or set(content) <= {"application/json", "application/problem+json"}
                ):
                    response["content"] = problem
    for name in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(name, None)
    app.openapi_schema = schema
    return schema
