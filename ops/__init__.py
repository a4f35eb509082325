"""Operations tooling outside the product's runtime: Grafana dashboards as code and their provisioning.

An outer layer like the CLI: it may import ``core`` (the metric catalogue); nothing in the
product imports it (an import-linter contract says so).

- ``dashboards``: the five Grafana dashboards, built with Grafana's builder library from
  ``core.metrics``, and ``panel_queries()``: every panel's PromQL, for tests to run.
- ``grafana``: push them to Grafana with grafana-client, or export the provisioning folder.
- ``cli``: ``pacsai grafana provision`` / ``export`` (the ``pacsai.commands`` entry point).
"""

from __future__ import annotations

__all__ = ["cli", "dashboards", "grafana"]
