"""A body-size gate in front of everything: a request that declares more than the limit is
answered 413 before a byte of its body is read.

It runs as an ASGI middleware in Ray Serve's HTTP proxy (``http_options.middlewares``), so an
oversized STOW-RS request never travels to a replica, and in the app itself for in-process use.
"""

from __future__ import annotations

import json
from typing import Any

from core.numbers import ascii_int

__all__ = ["BodyLimit"]


class BodyLimit:
    """ASGI middleware: 413 problem detail when ``Content-Length`` exceeds ``max_bytes``."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            size = ascii_int(dict(scope.get("headers") or []).get(b"content-length", b""), 32)
            if size is not None and size > self.max_bytes:
                body = json.dumps(
                    {
                        "type": "urn:pacsai:problem:too-large",
                        "title": "Content Too Large",
                        "status": 413,
                        "detail": f"body of {size} bytes declared; the limit is {self.max_bytes}",
                        "instance": scope.get("path", ""),
                    }
                ).encode()
                headers = [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send({"type": "http.response.start", "status": 413, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
