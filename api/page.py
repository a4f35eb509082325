"""The review page (issue 12): static files the API serves itself at ``/review/``.

No build step and no second web server: ``api/static/review/`` holds plain HTML, one ES module
and one stylesheet. Loading them needs no credentials (they hold no data); the page asks the
reader for an API token or an OIDC bearer token and sends it with every call to
``/api/v1/clinical/*``, which applies the reader's alert policy. The files are read once, at
import, from a fixed list: no path from the request ever reaches the file system.

Every answer carries a Content-Security-Policy that allows only this origin's script, style and
API (``img-src`` adds ``blob:`` for the heatmap images the page fetches with its header, and
``data:``), forbids framing and inline script, and is not cached, so a new release is picked up.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from api.problems import Problem

__all__ = ["CONTENT_SECURITY_POLICY", "PAGE_FILES", "router"]

STATIC = Path(__file__).resolve().parent / "static" / "review"

PAGE_FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
"""The page's files and their media types: nothing else is served from ``/review/``."""

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
"""No inline script or style, no other origin; heatmaps arrive as ``blob:`` URLs."""

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}

_FILES: dict[str, bytes] = {name: (STATIC / name).read_bytes() for name in PAGE_FILES}

router = APIRouter(include_in_schema=False)
"""``GET /review/`` and its assets; public (the data behind them is not)."""


@router.get("/review")
def review_root() -> RedirectResponse:
    """Redirect to the page's directory, so its relative asset URLs resolve."""
    return RedirectResponse("/review/", status_code=308)


@router.get("/review/")
def review_page() -> Response:
    """The page itself."""
    return _file("index.html")


@router.get("/review/{name}")
def review_asset(name: str) -> Response:
    """One of the page's files.

    Raises:
        Problem: 404, a name not in ``PAGE_FILES``.
    """
    if name not in PAGE_FILES:
        raise Problem(404, "no such file of the review page", "not-found")
    return _file(name)


def _file(name: str) -> Response:
    return Response(_FILES[name], media_type=PAGE_FILES[name], headers=_HEADERS)
