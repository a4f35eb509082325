"""The config file and the secrets it names: read once, validated, before anything starts.

Kept light (no actor, Serve or torch import), so ``pacsai up`` can start Ray while the rest of
the pipeline's modules load; ``actors.pipeline`` re-exports both.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

from core.bundles import expand_models
from core.config import AppConfig, parse_config
from core.errors import ConfigError
from core.exposure import demo_mode, exposure_warnings
from core.identifiers import DEMO_KEY

__all__ = ["hash_key", "load_config", "warn_exposure"]

logger = logging.getLogger(__name__)


def load_config(path: str | Path) -> AppConfig:
    """Read and validate a YAML config file.

    Raises:
        ConfigError: The file cannot be read, is not YAML, or has invalid fields (all listed).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(str(p), [f"<file>: cannot read ({exc.strerror})"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(p), [f"<file>: not valid YAML ({exc})"]) from None
    if isinstance(raw, dict):  # bundle and spec entries: what their files declare (issue 17)
        raw = expand_models(raw, lambda f: Path(f).read_text(encoding="utf-8"), lambda f: Path(f).is_file(), str(p))
    return parse_config(raw, str(p))


def hash_key(cfg: AppConfig) -> bytes:
    """Return the key for hashed identifiers: the configured env var's, else (demo mode
    only, ``core.exposure``) the public demo key.

    Raises:
        ConfigError: ``hash_key_env`` names a variable that is not set, or is unset outside demo mode.
    """
    if cfg.hash_key_env is None:
        if not demo_mode(cfg):
            raise ConfigError(
                "config", ["hash_key_env: missing; expected the site's identifier hash key outside demo mode"]
            )
        return DEMO_KEY
    value = os.environ.get(cfg.hash_key_env)
    if not value:
        raise ConfigError("environment", [f"{cfg.hash_key_env}: not set; expected the identifier hash key"])
    return value.encode()


def warn_exposure(cfg: AppConfig) -> None:
    """Log, loudly, every open door the config asked for by name (``allow_plaintext``, the
    demo hash key, demo weights trusted from their sidecar): once, at start."""
    for line in exposure_warnings(cfg):
        logger.warning("NOT LOCKED DOWN: %s", line)
