"""The config file and the secrets it names: read once, validated, before anything starts.

Kept light (no actor, Serve or torch import), so ``pacsai up`` can start Ray while the rest of
the pipeline's modules load; ``actors.pipeline`` re-exports both.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from core.bundles import expand_models
from core.config import AppConfig, parse_config
from core.errors import ConfigError
from core.identifiers import DEFAULT_KEY

__all__ = ["hash_key", "load_config"]


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
    """Return the key for hashed identifiers (from the configured env var, else the default).

    Raises:
        ConfigError: ``hash_key_env`` names a variable that is not set.
    """
    if cfg.hash_key_env is None:
        return DEFAULT_KEY
    value = os.environ.get(cfg.hash_key_env)
    if not value:
        raise ConfigError("environment", [f"{cfg.hash_key_env}: not set; expected the identifier hash key"])
    return value.encode()
