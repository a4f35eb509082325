"""Keyed hashes of patient identifiers, so logs and the ledger can group without PHI."""

from __future__ import annotations

import hmac

__all__ = ["DEFAULT_KEY", "DEMO_KEY", "hash_identifier"]

DEMO_KEY = b"pacsai-default-identifier-key"
"""The demo key: public (it is in this file), so its hashes protect nothing. Only demo mode
(every bind on loopback, ``core.exposure.demo_mode``) may use it, with a warning; anywhere
else the config must name the site's key (``hash_key_env``) or the bridge does not start."""

DEFAULT_KEY = DEMO_KEY
"""The old name of ``DEMO_KEY`` (tests and benchmarks)."""


def hash_identifier(value: str, key: bytes) -> str:
    """Return a short keyed hash (HMAC-SHA256, 16 hex digits) of an identifier.

    There is no default key: every caller passes the site's (``actors.config_file.hash_key``).

    >>> hash_identifier("12345", DEMO_KEY) == hash_identifier("12345", DEMO_KEY)
    True
    >>> hash_identifier("", DEMO_KEY) == ""
    True
    """
    if not value:
        return ""
    # hmac.digest: the one-shot C implementation, a third of hmac.new's cost per call
    return hmac.digest(key, value.encode("utf-8", "surrogateescape"), "sha256").hex()[:16]
