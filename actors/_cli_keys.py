"""``pacsai keys rotate``: a new data key, and everything at rest re-sealed under it.

Order matters for a crash at any point: the key file is replaced first, keeping the old keys,
so every file and column stays readable whichever key sealed it; then the files
(``state.sealed_files.reseal_tree``) and the database columns
(``state.data_keys_db.reseal_databases``) are re-sealed. Both are idempotent, so running
``pacsai keys rotate --drop-old`` afterwards finishes an interrupted re-seal, checks that nothing
is left under a retired key, and only then removes the retired keys from the key file.

Run it with the bridge stopped: running actors loaded the key file when they started and seal
under the key that was current then, until they restart.
"""

from __future__ import annotations

import argparse
import getpass
import time
from pathlib import Path

from core.audit import AuditEvent
from core.config import AppConfig
from core.envelope import Keyring
from core.errors import ConfigError
from core.types import AuditEventType
from state.data_keys import DEMO_KEY_FILE, load_keyring, rotated, write_key_file
from state.layout import VarLayout
from state.sealed_files import count_not_current, reseal_tree, sealed_roots

__all__ = ["key_file_of", "keys_rotate", "register_keys", "reseal_all"]


def key_file_of(cfg: AppConfig) -> Path:
    """The key file ``rotate`` rewrites (``key_file``, else the demo key under var_dir).

    Raises:
        ConfigError: Encryption is off, or the keys come from ``key_env`` (rotate that secret
            with ``--out`` and point ``key_env`` at the new JSON).
    """
    enc = cfg.storage.encryption
    if not enc.enabled:
        raise ConfigError("storage.encryption", ["enabled: got false; there are no data keys to rotate"])
    if enc.key_file:
        return Path(enc.key_file).expanduser()
    if enc.key_env:
        raise ConfigError("storage.encryption", [f"key_env ({enc.key_env}): rotate writes a file; use key_file"])
    return VarLayout.at(cfg.storage.var_dir).root / "keys" / DEMO_KEY_FILE


def reseal_all(cfg: AppConfig, ring: Keyring) -> tuple[int, int]:
    """Re-seal every file and column not under ``ring.current``; ``(files, values)`` re-sealed."""
    from state.data_keys_db import reseal_databases  # the database half; imports its stores

    files = reseal_tree(sealed_roots(VarLayout.at(cfg.storage.var_dir)), ring)
    return files, reseal_databases(cfg, ring)


def keys_rotate(cfg: AppConfig, key_id: str | None, drop_old: bool) -> int:
    """Rotate (or, with ``drop_old``, finish and drop the retired keys); print what was done."""
    path = key_file_of(cfg)
    ring = load_keyring(cfg.storage.encryption, VarLayout.at(cfg.storage.var_dir).root)
    assert ring is not None  # key_file_of refused encryption off
    if not drop_old:
        ring = rotated(ring, key_id)
        write_key_file(path, ring)
        print(f"data key {ring.current} is current ({len(ring.keys)} keys in {path})")
    files, values = reseal_all(cfg, ring)
    print(f"re-sealed under {ring.current}: {files} files, {values} database values")
    if not drop_old:
        _audit(cfg, {"current": ring.current, "keys": sorted(ring.keys), "files": files, "values": values})
        return 0
    from state.data_keys_db import count_unsealed_current

    left = count_not_current(sealed_roots(VarLayout.at(cfg.storage.var_dir)), ring)
    left += count_unsealed_current(cfg, ring)
    if left:
        print(f"{left} files or values are still not under {ring.current}: retired keys kept")
        return 1
    write_key_file(path, Keyring({ring.current: ring.keys[ring.current]}, ring.current))
    print(f"retired keys dropped: {ring.current} is the only key in {path}")
    _audit(cfg, {"current": ring.current, "dropped": sorted(set(ring.keys) - {ring.current})})
    return 0


def _audit(cfg: AppConfig, detail: dict[str, object]) -> None:
    """A ``data_keys_rotated`` audit event: key ids and counts, never key material."""
    from state.ledger import open_ledger

    ledger = open_ledger(cfg.storage)
    try:
        event = AuditEvent(AuditEventType.DATA_KEYS_ROTATED, f"user:{getpass.getuser()}", detail=dict(detail))
        ledger.audit.append([event], time.time())
    finally:
        ledger.close()


def register_keys(add: argparse.ArgumentParser) -> None:
    """The ``keys`` sub-commands under ``add`` (``pacsai keys``)."""
    example = "Example:\n  pacsai keys rotate --config configs/prod.yaml\n  pacsai keys rotate --drop-old"
    add.epilog = example
    ksub = add.add_subparsers(dest="keys_command", required=True)
    rot = ksub.add_parser("rotate", help="add a data key and re-seal files and columns under it", epilog=example)
    rot.add_argument("--key-id", help="the new key's id (default k<n>)")
    rot.add_argument(
        "--drop-old", action="store_true", help="no new key: finish re-sealing, then drop the retired keys"
    )
    rot.add_argument("--config", default=argparse.SUPPRESS, help="config YAML file")
