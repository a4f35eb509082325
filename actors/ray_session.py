"""Joining or starting Ray as configured: token authentication and TLS from the config, a local
Ray with its metrics endpoint for ``pacsai up``, an installation's running Ray for the CLI.

Kept apart from the composition root (``actors.pipeline``, which re-exports these), which
calls ``ensure_ray`` before anything else.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import ray

from core.config import AppConfig
from core.errors import DependencyUnavailable
from state.files import private_umask

__all__ = ["connect_ray", "ensure_ray", "ray_security_env", "worker_env"]


def ray_security_env(cfg: AppConfig) -> dict[str, str]:
    """The environment that turns on Ray's token authentication and TLS for this process, from
    ``ray.auth_token_file`` and ``ray.tls`` (Ray reads them from the environment only).

    >>> from core.config import parse_config
    >>> ray_security_env(parse_config({"ray": {"auth_token_file": "/etc/pacsai/ray.token"}}))
    {'RAY_AUTH_MODE': 'token', 'RAY_AUTH_TOKEN_PATH': '/etc/pacsai/ray.token'}
    """
    env: dict[str, str] = {}
    if cfg.ray.auth_token_file:
        env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": cfg.ray.auth_token_file}
    if cfg.ray.tls is not None:
        env |= {
            "RAY_USE_TLS": "1",
            "RAY_TLS_SERVER_CERT": cfg.ray.tls.certificate,
            "RAY_TLS_SERVER_KEY": cfg.ray.tls.private_key,
            "RAY_TLS_CA_CERT": cfg.ray.tls.ca_certificates,
        }
    return env


def _secure(cfg: AppConfig) -> None:
    """Apply ``ray_security_env`` to this process before it talks to Ray.

    Ray reads its settings into a cached config when it is imported, so they are refreshed here,
    as Ray's own ``_enable_token_auth`` does, and the token cache is reset.
    """
    env = ray_security_env(cfg)
    if not env:
        return
    os.environ.update(env)
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


_INHERITED: dict[str, str] | None = None
"""The environment the workers of a Ray this process started inherit (``None``: it did not)."""


def worker_env(env: Mapping[str, str]) -> dict[str, str]:
    """What of ``env`` an actor's process must be given through Ray's runtime environment.

    All of it on a Ray this process did not start (another machine, or a Ray started before
    these were set); else only what differs from what its workers inherited. An actor with no
    runtime environment of its own can take a worker Ray has already started (about a second
    less before the listener answers).
    """
    if _INHERITED is None:
        return dict(env)
    return {k: v for k, v in env.items() if _INHERITED.get(k) != v}


def ensure_ray(cfg: AppConfig) -> None:
    """Connect to (or start) Ray as configured, unless this process already did."""
    if ray.is_initialized():
        return
    private_umask()  # before Ray starts: the raylet and every worker inherit it (PHI files 0600)
    _secure(cfg)
    local = cfg.ray.address is None
    global _INHERITED
    # A Ray started here hands this environment to every worker it starts; one joined (an
    # address, or RAY_ADDRESS) does not.
    _INHERITED = dict(os.environ) if local and not os.environ.get("RAY_ADDRESS") else None
    ray.init(
        address=cfg.ray.address,
        num_cpus=cfg.ray.num_cpus if local else None,
        namespace=cfg.ray.namespace,
        include_dashboard=False,
        logging_level=logging.WARNING,
        # Ray's Prometheus endpoint (one per node) and how often workers report to it: only a
        # Ray this process starts takes them; a cluster's come from its `ray start`.
        **(
            {
                "_metrics_export_port": cfg.metrics.export_port,
                "_system_config": {"metrics_report_interval_ms": cfg.metrics.report_interval_ms},
            }
            if local
            else {}
        ),
    )


def connect_ray(cfg: AppConfig) -> None:
    """Join the running Ray of an installation (config address, else RAY_ADDRESS, else auto).

    Raises:
        DependencyUnavailable: No Ray is running there (``pacsai up`` starts one).
    """
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or "auto"
    _secure(cfg)
    try:
        ray.init(address=address, namespace=cfg.ray.namespace, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError) as exc:
        raise DependencyUnavailable("ray", f"no running Ray at {address!r} ({exc}); start `pacsai up` first") from exc
