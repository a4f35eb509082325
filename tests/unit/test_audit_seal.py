"""Where the audit signing key comes from and where the chain head goes (``state.audit_seal``)."""

from __future__ import annotations

import logging
import socket

import pytest

from core.audit_seal import AuditSigner, ChainHead
from core.config import AuditConfig
from core.errors import ConfigError
from state.audit_seal import HEAD_FILE, open_seal, read_head, write_head


def test_the_key_comes_from_a_file_or_the_environment_and_others_are_trusted_beside_it(tmp_path, monkeypatch):
    key, old = AuditSigner.generate(), AuditSigner.generate()
    (tmp_path / "k.pem").write_bytes(key.to_pem())
    seal = open_seal(AuditConfig(key_file=str(tmp_path / "k.pem"), trusted_public_keys=[old.public_text()]), tmp_path)
    assert seal.signer.key_id == key.key_id and set(seal.keys.ids) == {key.key_id, old.key_id}
    assert seal.head_file == tmp_path / "audit" / HEAD_FILE
    monkeypatch.setenv("AUDIT_KEY", key.to_pem().decode())
    assert (
        open_seal(AuditConfig(key_env="AUDIT_KEY", head_dir=str(tmp_path / "h")), tmp_path).signer.key_id == key.key_id
    )
    assert not (tmp_path / "audit").exists()  # no demo key made when one is configured


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (AuditConfig(key_env="AUDIT_KEY_UNSET"), "AUDIT_KEY_UNSET: not set"),
        (AuditConfig(demo_key=False), "got neither"),
        (AuditConfig(key_file="/nonexistent/key.pem"), "signing key"),
        (AuditConfig(trusted_public_keys=["AAAA"]), "trusted_public_keys"),
    ],
)
def test_no_usable_key_refuses_to_start(tmp_path, cfg, message):
    with pytest.raises(ConfigError, match=message):
        open_seal(cfg, tmp_path)


def test_the_demo_key_is_made_once_owner_only_and_said_not_for_production(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="state.audit_seal"):
        first = open_seal(AuditConfig(), tmp_path)
        second = open_seal(AuditConfig(), tmp_path)
    path = tmp_path / "audit" / "demo-signing-key.pem"
    assert first.signer.key_id == second.signer.key_id == AuditSigner.from_text(path.read_bytes()).key_id
    assert path.stat().st_mode & 0o777 == 0o600 and sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert [r.message for r in caplog.records if "not for production" in r.message]


def test_the_head_is_written_to_its_file_and_sent_as_an_rfc5424_syslog_line(tmp_path):
    sock_path = tmp_path / "log.sock"
    collector = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    collector.bind(str(sock_path))
    collector.settimeout(5)
    try:
        seal = open_seal(AuditConfig(head_dir=str(tmp_path / "heads"), syslog_address=str(sock_path)), tmp_path)
        head = ChainHead(7, "ab" * 32, seal.signer.key_id, seal.signer.sign(7, "ab" * 32), 0, 1_700_000_000.5)
        write_head(seal, head)
        line = collector.recv(4096).decode()
    finally:
        collector.close()
    assert read_head(tmp_path / "heads" / HEAD_FILE) == head and read_head(tmp_path / "none.json") is None
    assert line.startswith("<84>1 2023-11-14T22:13:20.500Z ") and line.endswith(" audit-head - " + head.to_json())
