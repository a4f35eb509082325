"""The FHIR HTTP client: POST a transaction Bundle to the EHR's FHIR R4 endpoint (httpx).

What an answer means for the report waiting in the outbox:

- 2xx: delivered.
- no connection, a timeout, 408, 429 or 5xx: the endpoint is down or busy
  (``DependencyUnavailable``): the report waits without spending its retry budget.
- any other 4xx: the endpoint refuses this Bundle (``RejectedInput``): retried with backoff
  (someone may fix a mapping or permission), dead when the budget is spent.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from actors.adapters.tls import client_context
from core.config import FhirEndpointConfig
from core.errors import ConfigError, DependencyUnavailable, RejectedInput

__all__ = ["FhirClient"]

_FHIR_JSON = "application/fhir+json"


class FhirClient:
    """Sends transaction Bundles to one FHIR base URL."""

    def __init__(self, cfg: FhirEndpointConfig) -> None:
        """Open the HTTP client.

        Raises:
            ConfigError: ``token_env`` names an environment variable that is not set.
        """
        headers = {"Content-Type": _FHIR_JSON, "Accept": _FHIR_JSON}
        if cfg.token_env:
            token = os.environ.get(cfg.token_env)
            if not token:
                raise ConfigError("environment", [f"{cfg.token_env}: not set; expected the FHIR bearer token"])
            headers["Authorization"] = f"Bearer {token}"
        verify: Any = client_context(cfg.tls) if cfg.tls else True
        self._url = cfg.base_url.rstrip("/")
        self._http = httpx.Client(timeout=cfg.timeout_s, headers=headers, verify=verify)

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()

    def transaction(self, bundle: dict[str, Any], subject: str = "") -> dict[str, Any]:
        """POST a transaction Bundle to the base URL; return the response Bundle.

        Raises:
            DependencyUnavailable: The endpoint cannot be reached, timed out, or answered
                408, 429 or 5xx.
            RejectedInput: Any other non-2xx answer (the message has the status and the
                endpoint's OperationOutcome diagnostics).
        """
        try:
            response = self._http.post(self._url, json=bundle)
        except httpx.TransportError as exc:
            raise DependencyUnavailable("fhir", f"{type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if status in (408, 429) or status >= 500:
            raise DependencyUnavailable("fhir", f"HTTP {status} from {self._url}")
        if not 200 <= status < 300:
            raise RejectedInput(f"HTTP {status}: {_diagnostics(response)}", subject)
        body = _json(response)
        return body if isinstance(body, dict) else {}  # delivered, whatever the body says


def _json(response: httpx.Response) -> Any:
    """The body as JSON, or ``None`` when it is not JSON (or nested too deep to read)."""
    try:
        return response.json()
    except (ValueError, RecursionError):
        return None


def _diagnostics(response: httpx.Response) -> str:
    """The OperationOutcome's first diagnostics, else the start of the body."""
    body = _json(response)
    issues = body.get("issue") if isinstance(body, dict) else None
    first = issues[0] if isinstance(issues, list) and issues else None
    if isinstance(first, dict):
        return str(first.get("diagnostics") or first.get("code"))[:300]
    return "" if isinstance(body, dict) and not issues else response.text[:300]
