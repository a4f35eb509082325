"""Operations tooling outside the product's runtime: Grafana dashboards as code and their provisioning.

An outer layer like the CLI: it may import ``core`` (the metric catalogue); nothing in the
product imports it (an import-linter contract says so).
"""

from __future__ import annotations

__all__: list[str] = []
