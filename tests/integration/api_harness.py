"""The API in process over a real ledger: FastAPI's TestClient on ``create_app(ctx)``.

For route tests that need no Ray: ``make_harness(tmp_path, storage)`` builds the context the
Serve replica builds (``api.deployment.build_context``), and ``headers(*scopes)`` issues a real
token with those scopes through the ledger.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import issue_token
from api.context import ApiContext
from api.deployment import build_context
from core.auth import Scope
from core.config import AppConfig, StorageConfig, parse_config
from core.identifiers import DEFAULT_KEY

__all__ = ["ApiHarness", "make_harness"]


@dataclass
class ApiHarness:
    """A client, the context behind it, and tokens on demand."""

    client: TestClient
    ctx: ApiContext
    cfg: AppConfig
    _tokens: dict[tuple[str, ...], str] = field(default_factory=dict)

    def headers(self, *scopes: Scope | str, name: str = "") -> dict[str, str]:
        """A bearer header of a token with exactly these scopes (one token per scope set)."""
        key = tuple(sorted(str(s) for s in scopes))
        if key not in self._tokens:
            who = name or ("t-" + "-".join(key) if key else "t-none")
            text, _ = issue_token(self.ctx.ledger.tokens, who, list(key), None, "test", time.time())
            self._tokens[key] = text
        return {"Authorization": f"Bearer {self._tokens[key]}"}

    def close(self) -> None:
        self.client.close()
        self.ctx.close()


def make_harness(tmp_path: Path, storage: StorageConfig, **overrides: Any) -> ApiHarness:
    """An API over the ledger of ``storage`` (migrated here), plaintext on loopback.

    ``overrides`` are top-level config sections (``api`` entries are merged).
    """
    from state.ledger import open_ledger

    open_ledger(storage).close()  # migrations, as the composition root applies them
    raw: dict[str, Any] = {
        "storage": storage.model_dump(),
        "api": {"allow_plaintext": True, **overrides.pop("api", {})},
        "listener": {"min_free_bytes": 0},
        **overrides,
    }
    cfg = parse_config(raw)
    ctx = build_context(cfg, DEFAULT_KEY)
    return ApiHarness(TestClient(create_app(ctx), base_url="http://127.0.0.1"), ctx, cfg)
