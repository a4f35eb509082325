"""The API as a Ray Serve application: FastAPI as the ingress of the ``api`` deployment.

Ray Serve's HTTP proxy terminates TLS (``api.tls``; ``serve.start(http_options=...)`` by the
composition root) and spreads requests over ``api.replicas`` replicas; each replica opens its
own ledger connection and its own durable intake (``build_context``). The composition root
(``actors.pipeline``) is the one caller of ``build_api_app``.
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import Any

from ray import serve
from ray.serve import Application

from actors.adapters.clock import SystemClock
from api.app import create_app
from api.audit import RequestAudit
from api.auth import Authenticator
from api.context import ApiContext
from api.operations import ModelControl, Operations, RayModelControl
from core.clinical import model_findings
from core.config import AppConfig, StorageConfig
from core.placement import cell_resources
from state.layout import VarLayout
from state.ledger import open_ledger
from state.policy_file import PolicyHolder
from state.spool import SpoolIntake

__all__ = ["API_APP", "ApiDeployment", "build_api_app", "build_context", "http_options"]

logger = logging.getLogger(__name__)

API_APP = "api"
"""The Serve application name of the API (route prefix ``/``)."""


def build_context(
    cfg: AppConfig, key: bytes, storage: StorageConfig | None = None, models: ModelControl | None = None
) -> ApiContext:
    """The services of one API replica (or of a test's in-process app).

    Args:
        cfg: The installation's config (``cfg.api`` set).
        key: The identifier hash key (the listener's).
        storage: The cell whose spool STOW-RS writes into (default: the config's storage).
        models: Model control for the model routes (default: none; they answer 503).

    Raises:
        ConfigError: The alert policy file (``clinical.policy_file``) is refused.
    """
    if cfg.api is None:
        raise ValueError("api: the config has no api section")
    storage = storage or cfg.storage
    ledger = open_ledger(storage)
    layout = VarLayout.at(storage.var_dir)
    intake = SpoolIntake(
        layout.spool,
        layout.rejected,
        ledger,
        cfg.assembly.quiet_period_s,
        SystemClock(),
        key,
        actor="stow-rs",
        min_free_bytes=cfg.listener.min_free_bytes,
        workers=4,
        assembly=cfg.assembly,
    )
    clinical = cfg.clinical
    policy = (
        PolicyHolder(clinical.policy_file, clinical.policy_reload_s, model_findings(cfg), ledger.clinical)
        if clinical.policy_file
        else None
    )
    return ApiContext(
        cfg=cfg,
        ledger=ledger,
        intake=intake,
        auth=Authenticator(ledger.tokens, cfg.api.oidc, jwks_ssl_context=_jwks_trust(cfg)),
        operations=Operations(cfg, ledger, models),
        audit=RequestAudit(ledger.audit, cfg.api.audit_reads_every_s),
        policy=policy,
    )


def _jwks_trust(cfg: AppConfig) -> ssl.SSLContext | None:
    """Trust for the OIDC JWKS URL: the configured CAs, else the system's (``None``)."""
    oidc = cfg.api.oidc if cfg.api is not None else None
    if oidc is None or not oidc.ca_certificates:
        return None
    context = ssl.create_default_context(cafile=oidc.ca_certificates)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@serve.deployment(name="api")
@serve.ingress()
class ApiDeployment:
    """One API replica: its own ledger connection, intake and request audit."""

    def __init__(self, cfg: AppConfig, storage: StorageConfig, key: bytes, log_level: str = "INFO") -> None:
        logging.getLogger().setLevel(log_level)
        for noisy in ("httpx", "python_multipart", "multipart"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self._ctx = build_context(cfg, key, storage, RayModelControl(cfg))

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self._ctx)

    def check_health(self) -> None:
        """Serve restarts a replica whose ledger connection is broken beyond repair."""
        problem = self._ctx.operations.readiness()
        if problem:
            logger.warning("API replica not ready: %s", problem)

    def __del__(self) -> None:
        try:
            self._ctx.close()
        except Exception:  # best effort at shutdown
            logger.debug("API context close failed", exc_info=True)


def http_options(cfg: AppConfig) -> dict[str, Any]:
    """``serve.start(http_options=...)`` for ``cfg.api``: bind address, port, TLS."""
    api = cfg.api
    if api is None:
        return {}
    options: dict[str, Any] = {"host": api.host, "port": api.port}
    if api.tls is not None:
        options |= {"ssl_certfile": api.tls.certificate, "ssl_keyfile": api.tls.private_key}
        if api.tls.ca_certificates:
            options["ssl_ca_certs"] = api.tls.ca_certificates
    else:
        logger.warning("API on %s:%d WITHOUT TLS (api.allow_plaintext: true): loopback only", api.host, api.port)
    return options


def build_api_app(cfg: AppConfig, storage: StorageConfig, key: bytes, secrets: dict[str, str]) -> Application:
    """The API application, bound to its config; deploy with ``serve.run(app, name=API_APP,
    route_prefix="/")``.

    Args:
        cfg: The config (``cfg.api`` set).
        storage: The cell whose spool STOW-RS writes into (on a cluster: its replicas run there).
        key: The identifier hash key.
        secrets: Env vars the replicas need (the PostgreSQL DSN), by name.
    """
    assert cfg.api is not None
    actor_options: dict[str, Any] = {"num_cpus": cfg.api.num_cpus}
    if storage.cell:
        actor_options["resources"] = cell_resources(storage.cell)
    if secrets:
        actor_options["runtime_env"] = {"env_vars": dict(secrets)}
    if os.environ.get("TCP_NODELAY"):
        actor_options.setdefault("runtime_env", {}).setdefault("env_vars", {})["TCP_NODELAY"] = "1"
    return ApiDeployment.options(
        num_replicas=cfg.api.replicas,
        max_ongoing_requests=cfg.api.max_ongoing_requests,
        ray_actor_options=actor_options,
        # Our own request audit records every request (who, what, status); Serve's access log
        # line per request would only repeat it, at a file stat and write each time.
        logging_config={"enable_access_log": False},
    ).bind(cfg, storage, key, cfg.logging.level)
