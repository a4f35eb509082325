"""Where the data keys that seal PHI at rest come from (``storage.encryption``).

The keys are read from ``key_file`` or the environment variable ``key_env``: a JSON object
``{"current": "<id>", "keys": {"<id>": "<base64 of 32 bytes>", ...}}``. ``current`` seals new
data; every listed key opens, so after ``pacsai keys rotate`` adds a key, files and columns
sealed under the old one still open until they are re-sealed and the old key is dropped.

With neither set and ``demo_key`` on (the default, so ``make demo`` needs no set-up) a key file
is generated under ``<var_dir>/keys`` (mode 0600) and a warning says it is not for production:
a key beside the data it protects only defends against copies of the data without it.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import secrets
import threading
from pathlib import Path

from core.config import EncryptionConfig
from core.envelope import EnvelopeError, Keyring
from core.errors import ConfigError

__all__ = ["DEMO_KEY_FILE", "keyring_to_json", "load_keyring", "parse_keyring", "rotated", "write_key_file"]

logger = logging.getLogger(__name__)

DEMO_KEY_FILE = "demo-data-keys.json"
"""The generated key file's name under ``<var_dir>/keys``."""

_lock = threading.Lock()
_warned: set[Path] = set()


def parse_keyring(text: str | bytes) -> Keyring:
    """Parse the key file's JSON; ``ValueError`` names what is wrong."""
    try:
        doc = json.loads(text)
        keys = {str(k): base64.b64decode(v, validate=True) for k, v in doc["keys"].items()}
        return Keyring(keys, str(doc["current"]))
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError, binascii.Error) as exc:
        raise ValueError(f'expected {{"current": id, "keys": {{id: base64}}}}: {exc}') from None
    except EnvelopeError as exc:
        raise ValueError(str(exc)) from None


def keyring_to_json(ring: Keyring) -> str:
    """The key file's JSON for ``ring``."""
    keys = {k: base64.b64encode(v).decode("ascii") for k, v in ring.keys.items()}
    return json.dumps({"current": ring.current, "keys": keys}, indent=2, sort_keys=True) + "\n"


def rotated(ring: Keyring | None, key_id: str | None = None) -> Keyring:
    """``ring`` plus a new random key that becomes current (ids k1, k2, ... unless given)."""
    keys = dict(ring.keys) if ring else {}
    new_id = key_id or f"k{len(keys) + 1}"
    while new_id in keys:
        new_id += "x"
    keys[new_id] = secrets.token_bytes(32)
    return Keyring(keys, new_id)


def write_key_file(path: Path, ring: Keyring) -> None:
    """Replace ``path`` atomically with ``ring`` (0600, fsynced, parent 0700 when created)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(keyring_to_json(ring))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _demo(var_dir: Path) -> Keyring:
    path = var_dir / "keys" / DEMO_KEY_FILE
    with _lock:
        if not path.exists():
            tmp = path.with_name(f"{DEMO_KEY_FILE}.{os.getpid()}.{threading.get_ident()}.new")
            write_key_file(tmp, rotated(None))
            try:
                os.link(tmp, path)  # never replaces: actors opening a fresh var dir agree on one key
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        ring = parse_keyring(path.read_text())
        if path not in _warned:
            _warned.add(path)
            logger.warning(
                "data at rest is sealed with a generated demo key (%s) kept beside the data: not for "
                "production; set storage.encryption.key_file or key_env",
                path,
            )
    return ring


def load_keyring(cfg: EncryptionConfig, var_dir: Path) -> Keyring | None:
    """The data keys of ``storage.encryption``; ``None`` when encryption is off.

    Raises:
        ConfigError: No key (and ``demo_key`` off), an unreadable or malformed key file.
    """
    if not cfg.enabled:
        return None
    try:
        if cfg.key_file:
            return parse_keyring(Path(cfg.key_file).expanduser().read_text())
        if cfg.key_env:
            text = os.environ.get(cfg.key_env)
            if not text:
                raise ConfigError("environment", [f"{cfg.key_env}: not set; expected the data keys JSON"])
            return parse_keyring(text)
    except (OSError, ValueError) as exc:
        raise ConfigError("storage.encryption", [f"data keys: {exc}"]) from None
    if not cfg.demo_key:
        raise ConfigError("storage.encryption", ["key_file/key_env: got neither; expected the data keys"])
    return _demo(var_dir)
