"""Paging webhooks: POST a critical finding as JSON to a role's https URL (httpx).

The answer is reported, not judged: ``core.pushes.classify`` turns the status (or no answer)
into delivered, retry later, or refused. Proxies from the environment are ignored
(``trust_env=False``): a paging call must not leave through a proxy the site did not
configure, and ``HTTPS_PROXY`` must not silently see the finding. Only https is called (the
policy's schema refuses other URLs), verified against ``clinical.webhooks.ca_file`` or the
system's CAs. The URL is never logged or returned: it may carry the receiver's secret.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from core.config import WebhookConfig

__all__ = ["WebhookAnswer", "WebhookClient"]


@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    """What one POST got.

    Attributes:
        status: The HTTP status, or ``None`` when nothing answered (refused, timed out).
        error: Why, in a few words without the URL (``''`` on a 2xx).
    """

    status: int | None
    error: str = ""


class WebhookClient:
    """POSTs JSON to webhook URLs (one connection pool for every role's receiver)."""

    def __init__(self, cfg: WebhookConfig) -> None:
        context = ssl.create_default_context(cafile=cfg.ca_file) if cfg.ca_file else ssl.create_default_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._http = httpx.Client(
            timeout=cfg.timeout_s,
            verify=context,
            trust_env=False,
            follow_redirects=False,
            headers={"User-Agent": "pacs-ai-bridge-pushes"},
        )

    def post(self, url: str, payload: dict[str, Any], idempotency_key: str = "") -> WebhookAnswer:
        """POST ``payload`` to ``url``; never raises for the network or the receiver."""
        if not url.startswith("https://"):
            return WebhookAnswer(400, "not an https URL")
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        try:
            response = self._http.post(url, json=payload, headers=headers)
        except httpx.TimeoutException as exc:
            return WebhookAnswer(None, f"timeout ({type(exc).__name__})")
        except httpx.TransportError as exc:  # refused, reset, TLS verification failed
            return WebhookAnswer(None, f"no answer ({type(exc).__name__})")
        status = response.status_code
        return WebhookAnswer(status, "" if 200 <= status < 300 else f"HTTP {status}")

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()
