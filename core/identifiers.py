"""Keyed hashes of patient identifiers, so logs and the ledger can group without PHI."""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["DEFAULT_KEY", "hash_identifier"]

DEFAULT_KEY = b"pacsai-default-identifier-key"
"""Used when no site key is configured; a site sets its own (``hash_key_env``)."""


def hash_identifier(value: str, key: bytes = DEFAULT_KEY) -> str:
    """Return a short keyed hash (HMAC-SHA256, 16 hex digits) of an identifier.

    >>> hash_identifier("12345") == hash_identifier("12345")
    True
    >>> hash_identifier("") == ""
    True
    """
    if not value:
        return ""
    return hmac.new(key, value.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:16]
