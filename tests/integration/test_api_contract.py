"""The API keeps the contract its OpenAPI document states, for every operation in it.

- Property (hypothesis, over the OpenAPI): no operation but the health checks answers anything
  but 401 without credentials (or with a bad one), and none answers 2xx to a token that lacks
  its scope (the scope each route requires is read from the route itself, not listed here).
- schemathesis over ``/openapi.json``: no 5xx, and every response matches its documented
  status, media type and schema.

Both run the real app in process over a real SQLite ledger (``api_harness``).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from core.auth import Scope, implied
from core.config import StorageConfig
from tests.integration.api_harness import ApiHarness, make_harness

pytestmark = pytest.mark.integration

PUBLIC = {"/healthz", "/readyz", "/openapi.json"}


@pytest.fixture
def harness(tmp_path) -> ApiHarness:
    h = make_harness(tmp_path, StorageConfig(var_dir=str(tmp_path / "var")))
    yield h
    h.close()


def _operations(h: ApiHarness) -> list[tuple[str, str, Scope | None, dict[str, Any]]]:
    """(method, path, required scope, path parameter schemas) of every documented operation;
    the scope is the one its security requirement names (FastAPI writes it from the route's
    own dependency, so nothing is listed by hand here)."""
    spec = h.client.get("/openapi.json").json()
    out = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            params = {p["name"]: p["schema"] for p in operation.get("parameters", []) if p["in"] == "path"}
            named = [Scope(s) for req in operation.get("security", []) for s in req.get("bearer", [])]
            out.append((method.upper(), path, named[0] if len(named) == 1 else None, params))
    return out


def _value(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    if schema.get("type") == "integer":
        return st.integers(min_value=1, max_value=2**31).map(str)
    pattern = schema.get("pattern")
    if pattern:
        return st.from_regex(pattern, fullmatch=True).filter(lambda s: 0 < len(s) <= 64 and "/" not in s)
    # "." and ".." are not path segments a client sends (URLs are normalised before routing).
    return st.text("abcdefghijklmnopqrstuvwxyz0123456789.-_", min_size=1, max_size=20).filter(lambda s: s.strip("."))


def test_every_operation_but_health_needs_credentials_and_its_scope(harness):
    operations = _operations(harness)
    guarded = [op for op in operations if op[1] not in PUBLIC]
    assert len(guarded) >= 30, [op[:2] for op in operations]
    missing = [op[:2] for op in guarded if op[2] is None]
    assert not missing, f"operations without a required scope: {missing}"
    tokens = {frozenset(held): harness.headers(*held) for held in ([], [Scope.INGEST], [Scope.READ], [Scope.OPERATE])}

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        method, path, scope, params = data.draw(st.sampled_from(guarded), label="operation")
        url = path
        for name, schema in params.items():
            url = url.replace("{" + name + "}", data.draw(_value(schema), label=name))
        body: dict[str, Any] = {"json": {}} if method in ("POST", "PUT") else {}
        credential = data.draw(st.sampled_from(["none", "garbage", "wrong-secret", "scoped"]), label="credential")
        if credential == "scoped":
            lacking = [held for held in tokens if scope not in implied(held)]
            held = data.draw(st.sampled_from(lacking), label="held")
            r = harness.client.request(method, url, headers=tokens[held], **body)
            assert r.status_code == 403, (method, url, sorted(held), r.status_code, r.text[:200])
            return
        headers = {
            "none": {},
            "garbage": {"Authorization": data.draw(st.sampled_from(["Basic YTpi", "Bearer", "Bearer x.y.z", "pab_1"]))},
            "wrong-secret": {
                "Authorization": re.sub(r"_[^_]+$", "_wrong", tokens[frozenset({Scope.READ})]["Authorization"])
            },
        }[credential]
        r = harness.client.request(method, url, headers=headers, **body)
        assert r.status_code == 401, (method, url, credential, r.status_code, r.text[:200])
        assert r.headers["content-type"] == "application/problem+json"

    check()


def test_health_checks_answer_without_credentials(harness):
    assert harness.client.get("/healthz").json() == {"status": "ok"}
    assert harness.client.get("/readyz").json() == {"status": "ready"}


@schemathesis.serializer("multipart/related")
def _related(ctx: Any, value: Any) -> bytes:
    """Generated STOW-RS bodies go out as they are (bytes or text), boundary or not."""
    return value if isinstance(value, bytes) else str(value).encode()


def test_no_server_error_and_every_response_as_documented(harness):
    """schemathesis generates requests for every operation from the OpenAPI document (valid ones
    and invalid ones) and checks each response against it. It runs each operation's strategy
    under hypothesis directly: its pytest plugin does not load under this pytest."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", harness.client.app)
    # Deploying and removing models needs a running Ray (tests/integration/test_api_serve.py).
    schema = schema.exclude(path_regex=r"^/api/v1/models")
    headers = harness.headers(Scope.ADMIN)
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()
        # A schema cannot say what a valid DICOM instance is: generated STOW-RS bodies are
        # rightly refused (400/415), so "valid data accepted" is not asked of those two.
        stow = operation.method.upper() == "POST" and "dicomweb" in operation.path
        _check(operation, headers, [positive_data_acceptance] if stow else [])
        checked.append(operation.label)
    assert len(checked) >= 30, checked


def _check(operation: Any, headers: dict[str, str], excluded: list[Any]) -> None:
    @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        case.call_and_validate(headers=headers, excluded_checks=excluded)

    run()
