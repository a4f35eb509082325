"""Unit tests run without Ray: any attempt to start it fails the test."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Unit tests must not start Ray (RS unit-test conftest does the same)."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        return

    def _refuse(*_a, **_k):
        raise AssertionError("unit tests must not start Ray")

    monkeypatch.setattr(ray, "init", _refuse)
