"""Where the audit trail's signing key comes from and where its chain head goes.

The key is read from ``storage.audit.key_file`` or the environment variable
``storage.audit.key_env``, never from the ledger: someone who can write the database but not
read the key cannot re-sign a rewritten history. With neither set and ``demo_key`` on (the
default, so ``make demo`` needs no set-up) a key is generated under ``<var_dir>/audit`` and a
warning says it is not for production: that key sits beside the ledger.

The chain head (the newest signed entry, ``core.audit_seal.ChainHead``) is written to
``chain-head.json`` in ``head_dir`` (atomically replaced) and, when ``syslog_address`` is set,
sent as an RFC 5424 line. ``pacsai audit verify`` reads the file back to detect truncation.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from core.audit_seal import AuditKeys, AuditSigner, ChainHead
from core.config import AuditConfig
from core.errors import ConfigError

__all__ = ["AuditSeal", "HEAD_FILE", "open_seal", "read_head", "write_head"]

logger = logging.getLogger(__name__)

HEAD_FILE = "chain-head.json"
"""The exported head's file name in ``head_dir``."""
DEMO_KEY_FILE = "demo-signing-key.pem"
"""The generated key's file name under ``<var_dir>/audit``."""

_demo_lock = threading.Lock()
_demo_signer: list[AuditSigner] = []
"""This process's generated key: every var directory it opens in demo mode gets the same one,
so ledgers opened side by side in one process (tests) agree on the signer."""
_warned: set[Path] = set()
"""Demo key files this process has warned about (once each, not at every ledger opened)."""


@dataclass(frozen=True, slots=True)
class AuditSeal:
    """What the audit log needs to sign and to verify.

    Attributes:
        signer: The key new entries are signed with.
        keys: Keys entries may be signed with (the signer's and rotated ones).
        head_file: Where the chain head is exported and read back.
        syslog_address: ``host:port`` or a socket path; ``None``: no syslog copy.
    """

    signer: AuditSigner
    keys: AuditKeys
    head_file: Path
    syslog_address: str | None = None


def _demo_key(var_dir: Path) -> AuditSigner:
    path = var_dir / "audit" / DEMO_KEY_FILE
    with _demo_lock:
        if not path.exists():
            _create_once(path, _demo_signer[0] if _demo_signer else AuditSigner.generate())
        signer = AuditSigner.from_text(path.read_bytes())  # whoever created it first: one key
        if not _demo_signer:
            _demo_signer.append(signer)
        if path in _warned:
            return signer
        _warned.add(path)
    logger.warning(
        "audit entries are signed with a generated demo key (%s, key id %s) kept beside the ledger: "
        "not for production; set storage.audit.key_file or key_env",
        path,
        signer.key_id,
    )
    return signer


def _create_once(path: Path, signer: AuditSigner) -> None:
    """Write the key file unless another process just did: every actor opening a fresh var
    directory at once must end up with the same key (a hard link never replaces a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(signer.to_pem())
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def _signer(cfg: AuditConfig, var_dir: Path) -> AuditSigner:
    try:
        if cfg.key_file:
            return AuditSigner.from_text(Path(cfg.key_file).expanduser().read_bytes())
        if cfg.key_env:
            text = os.environ.get(cfg.key_env)
            if not text:
                raise ConfigError("environment", [f"{cfg.key_env}: not set; expected the audit signing key"])
            return AuditSigner.from_text(text)
    except (OSError, ValueError) as exc:
        raise ConfigError("storage.audit", [f"signing key: {exc}"]) from None
    if not cfg.demo_key:
        raise ConfigError("storage.audit", ["key_file/key_env: got neither; expected the audit signing key"])
    return _demo_key(var_dir)


def open_seal(cfg: AuditConfig, var_dir: Path) -> AuditSeal:
    """Load the signing key and the trusted keys of ``storage.audit``.

    Raises:
        ConfigError: No key (and ``demo_key`` off), an unreadable or malformed key.
    """
    signer = _signer(cfg, var_dir)
    try:
        keys = AuditKeys.from_text(cfg.trusted_public_keys).with_key(signer.public)
    except ValueError as exc:
        raise ConfigError("storage.audit", [f"trusted_public_keys: {exc}"]) from None
    head_dir = Path(cfg.head_dir).expanduser() if cfg.head_dir else var_dir / "audit"
    return AuditSeal(signer, keys, head_dir / HEAD_FILE, cfg.syslog_address)


def write_head(seal: AuditSeal, head: ChainHead) -> None:
    """Export the head: replace the head file atomically, then send the syslog copy."""
    path = seal.head_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(head.to_json() + "\n")
    os.replace(tmp, path)
    if seal.syslog_address:
        _syslog(seal.syslog_address, head)


def read_head(path: Path) -> ChainHead | None:
    """The exported head in ``path``, or ``None`` when there is none.

    Raises:
        ValueError: The file is not a chain head.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return ChainHead.from_json(text.strip())


def _syslog(address: str, head: ChainHead) -> None:
    """One RFC 5424 line (facility authpriv, severity warning) with the head as its message."""
    if address.startswith("/"):
        target: str | tuple[str, int] = address
    else:
        host, _, port = address.rpartition(":")
        target = (host.strip("[]"), int(port))
    handler = logging.handlers.SysLogHandler(target, logging.handlers.SysLogHandler.LOG_AUTHPRIV)
    handler.append_nul = False  # RFC 5424 messages end where the datagram does
    try:
        stamp = datetime.fromtimestamp(head.exported_at, UTC).isoformat(timespec="milliseconds")
        line = f"1 {stamp.replace('+00:00', 'Z')} {socket.gethostname()} pacsai {os.getpid()} audit-head - {head.to_json()}"
        record = logging.LogRecord("pacsai.audit", logging.WARNING, __file__, 0, line, None, None)
        handler.emit(record)  # PRI <84>: authpriv.warning, then the RFC 5424 header above
    finally:
        handler.close()
