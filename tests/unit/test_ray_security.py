"""The config turns on Ray's token authentication and TLS for `pacsai up` (Ray reads them from
the environment only)."""

from __future__ import annotations

from actors.pipeline import ray_security_env
from core.config import parse_config


def test_no_security_settings_change_nothing() -> None:
    assert ray_security_env(parse_config({})) == {}


def test_token_file_and_tls_become_rays_environment() -> None:
    cfg = parse_config(
        {
            "ray": {
                "auth_token_file": "/etc/pacsai/ray/auth_token",
                "tls": {"certificate": "n.crt", "private_key": "n.key", "ca_certificates": "ca.crt"},
            }
        }
    )
    assert ray_security_env(cfg) == {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": "/etc/pacsai/ray/auth_token",
        "RAY_USE_TLS": "1",
        "RAY_TLS_SERVER_CERT": "n.crt",
        "RAY_TLS_SERVER_KEY": "n.key",
        "RAY_TLS_CA_CERT": "ca.crt",
    }
