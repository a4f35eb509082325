"""The audit collector's config and the exporter's cursor (the TLS collector itself:
tests/integration/test_audit_export.py)."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from actors.adapters.audit_syslog import AuditExporter, cursor_path
from core.audit import AuditEntry
from core.audit_export_config import AuditCollectorConfig
from core.config import StorageConfig
from core.errors import ConfigError


class _Trail:
    def __init__(self, entries: list[AuditEntry]) -> None:
        self.entries = entries

    def events(self, study_uid=None, limit=1000, *, job_id=None, after=0):
        return [e for e in self.entries if e.seq > after][:limit]


def test_the_collector_is_configured_under_storage_audit_with_tls_always(pki):
    storage = StorageConfig.model_validate(
        {"audit": {"collector": {"host": "arr.example", "ca_file": str(pki.ca), "source_id": "bridge-1"}}}
    )
    cfg = storage.audit.collector
    assert cfg is not None and (cfg.port, cfg.enabled, cfg.cert_file) == (6514, True, None)
    with pytest.raises(ValidationError, match="ca_file"):
        AuditCollectorConfig(host="arr.example")  # no CA: no way to send in plaintext
    with pytest.raises(ValidationError, match="expected both"):
        AuditCollectorConfig(host="arr.example", ca_file=str(pki.ca), cert_file=str(pki.client_cert))
    with pytest.raises(ValidationError, match="tls"):
        AuditCollectorConfig(host="arr.example", ca_file=str(pki.ca), tls=False)
    with pytest.raises(ConfigError, match="storage.audit.collector"):  # refused at start, not at first send
        AuditExporter(AuditCollectorConfig(host="a", ca_file=str(pki.client_key)), _Trail([]), pki.ca.parent / "c")


def test_each_collector_has_its_own_cursor_and_an_unreadable_one_sends_again_from_the_start(tmp_path, pki, caplog):
    cfg = AuditCollectorConfig(host="arr/../x", port=6514, ca_file=str(pki.ca))
    path = cursor_path(tmp_path, cfg)
    assert path.parent == tmp_path and path.name == "export-arr_.._x_6514.json"
    path.write_text("not json")
    with caplog.at_level(logging.WARNING):
        exporter = AuditExporter(cfg, _Trail([]), path)
    assert exporter.cursor == 0 and "sending from the start" in caplog.text  # resending is safe, skipping is not


def test_a_message_carries_its_seq_and_type_for_the_collector_to_deduplicate(tmp_path, pki):
    cfg = AuditCollectorConfig(host="arr.example", ca_file=str(pki.ca), source_id="bridge-1")
    entry = AuditEntry(12, 1_765_000_000.0, "delivery_failed", "stage:delivery", "1.2.3", "", 4, {})
    raw = AuditExporter(cfg, _Trail([entry]), tmp_path / "c.json").message(entry)
    assert raw.startswith(b"<84>1 2025-12-06T05:46:40.000000Z bridge-1 pacsai ")  # authpriv.warning: a failure
    assert b' IHE+RFC-3881 [pacsai@32473 seq="12" type="delivery_failed"] \xef\xbb\xbf<AuditMessage>' in raw
