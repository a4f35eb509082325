"""The audit trail reaches a real TLS syslog collector (rsyslog, imtcp over OpenSSL, mutual TLS)
as DICOM audit messages, through an outage: nothing lost, nothing doubled, resumed after a restart.

The sender runs directly over a real SQLite ledger (no Ray, no pipeline): the auditor only
runs ``AuditExporter.round`` in a loop.
"""

from __future__ import annotations

import collections
import re
import shutil
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from actors.adapters.audit_syslog import AuditExporter, cursor_path
from core.audit import AuditEvent
from core.audit_export_config import AuditCollectorConfig
from core.config import StorageConfig
from core.errors import DependencyUnavailable
from core.syslog5424 import BOM
from core.types import AuditEventType
from state.ledger import Ledger, open_ledger
from tests.pki import Pki, make_pki

RSYSLOGD = shutil.which("rsyslogd") or ""
pytestmark = pytest.mark.skipif(
    not RSYSLOGD or not list(Path("/usr/lib").glob("*/rsyslog/lmnsd_ossl.so")),
    reason="rsyslog with its OpenSSL driver is not installed (make system-packages: rsyslog rsyslog-openssl)",
)
STUDY = "1.2.826.0.1.3680043.8.498.77"
_RECORD = re.compile(
    r'^(?P<msgid>\S+) (?P<app>\S+) \[pacsai@32473 seq="(?P<seq>\d+)" type="(?P<type>\w+)"\] (?P<msg>.*)$'
)


class Collector:
    """rsyslogd as a child process: TLS syslog on a free loopback port, client certificate
    required, every message written as one line (MSGID, APP-NAME, structured data, MSG).

    rsyslog without the fix of rsyslog/rsyslog#6375 (merged December 2025) closes an ended TLS
    session's socket twice:
    when omfile opens its file between the two closes, the second close takes the file's
    descriptor, the next session reuses the number, and omfile writes the next messages into
    that client's socket instead of the file (our sender then reads plain text where TLS
    should be). Debian bookworm ships 8.2302, so the collector logs its own start message
    (``processInternalMessages``) and ``start`` waits until the file is open: omfile then
    never opens it while sessions end.
    """

    def __init__(self, directory: Path, pki: Pki) -> None:
        self.dir, self.out = directory, directory / "received.log"
        (directory / "work").mkdir(parents=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        (directory / "rsyslog.conf").write_text(
            f'global(workDirectory="{directory / "work"}" defaultNetstreamDriver="ossl" processInternalMessages="on"\n'
            f'  defaultNetstreamDriverCAFile="{pki.ca}" defaultNetstreamDriverCertFile="{pki.server_cert}"\n'
            f'  defaultNetstreamDriverKeyFile="{pki.server_key}")\n'
            'module(load="imtcp" streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")\n'
            f'input(type="imtcp" address="127.0.0.1" port="{self.port}")\n'
            'template(name="line" type="string" string="%msgid% %app-name% %structured-data% %msg%\\n")\n'
            f'action(type="omfile" file="{self.out}" template="line")\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf, pid = self.dir / "rsyslog.conf", self.dir / "rsyslog.pid"
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(pid)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = self.out.read_text(encoding="utf-8", errors="replace") if self.out.exists() else ""
            if f'x-pid="{self.proc.pid}"' in text:
                break  # this rsyslogd's start message is written: its file is open for good
            time.sleep(0.05)
        else:
            raise AssertionError("rsyslogd did not write its start message")
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("rsyslogd did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def records(self, count: int, timeout_s: float = 10.0) -> list[re.Match[str]]:
        """The received lines, once there are at least ``count`` of them."""
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.out.read_text(encoding="utf-8") if self.out.exists() else ""
            lines = [line for line in text.splitlines() if "pacsai@32473" in line]
            if len(lines) >= count or time.monotonic() > deadline:
                return [m for m in (_RECORD.match(line) for line in lines) if m]
            time.sleep(0.05)


@pytest.fixture
def collector(tmp_path: Path, pki: Pki):
    c = Collector(tmp_path / "collector", pki)
    c.start()
    yield c
    c.stop()


def _append(ledger: Ledger, n: int, now: float) -> None:
    kinds = [AuditEventType.INSTANCE_RECEIVED, AuditEventType.VALIDATED, AuditEventType.CONTEXT_READ]
    events = [
        AuditEvent(kinds[i % 3], "stage:test", STUDY, job_id=1, detail={"patient_key": "00112233aabbccdd"})
        for i in range(n)
    ]
    for event in events:  # one transaction each: one seq each, as the stages append them
        ledger.audit.append([event], now)


def test_the_trail_reaches_a_tls_collector_through_an_outage_once_each(tmp_path, pki, collector):
    ledger = open_ledger(StorageConfig(var_dir=str(tmp_path / "var")))
    cfg = AuditCollectorConfig(
        host="127.0.0.1",
        port=collector.port,
        ca_file=str(pki.ca),
        cert_file=str(pki.client_cert),
        key_file=str(pki.client_key),
        server_hostname="localhost",
        source_id="bridge-test",
        period_s=1.0,
    )
    cursor = cursor_path(tmp_path / "var" / "audit", cfg)
    now = [0.0]
    exporter = AuditExporter(cfg, ledger.audit, cursor, clock=lambda: now[0])
    _append(ledger, 5, 1_765_000_000.0)
    assert exporter.round() == 5
    assert len(collector.records(5)) == 5

    collector.stop()  # outage: the open connection is closed by the collector
    _append(ledger, 4, 1_765_000_001.0)
    with pytest.raises(DependencyUnavailable, match="audit-collector unavailable"):
        exporter.round()
    assert exporter.cursor == 5 and '"seq": 5' in cursor.read_text()
    assert "audit-collector unavailable" in exporter.outage
    collector.start()
    assert exporter.round() == 0  # backing off
    now[0] += 1.0
    assert exporter.round() == 4
    assert exporter.outage == ""
    exporter.close()

    restarted = AuditExporter(cfg, ledger.audit, cursor, clock=lambda: now[0])  # e.g. the auditor restarted
    assert restarted.cursor == 9 and restarted.round() == 0
    _append(ledger, 1, 1_765_000_002.0)
    assert restarted.round() == 1
    restarted.close()

    records = collector.records(10)
    seqs = collections.Counter(int(r["seq"]) for r in records)
    assert sorted(seqs) == list(range(1, 11)) and max(seqs.values()) == 1, seqs
    first = records[0]
    assert (first["msgid"], first["app"], first["type"]) == ("IHE+RFC-3881", "pacsai", "instance_received")
    assert first["msg"].encode().startswith(BOM)
    root = ET.fromstring(first["msg"].encode()[len(BOM) :])
    assert root.find("EventIdentification/EventID").attrib["csd-code"] == "110104"
    assert root.find("AuditSourceIdentification").attrib["AuditSourceID"] == "bridge-test"
    assert root.find("ParticipantObjectIdentification").attrib["ParticipantObjectID"] == STUDY


def test_a_collector_whose_certificate_is_not_trusted_gets_nothing(tmp_path, pki, collector):
    ledger = open_ledger(StorageConfig(var_dir=str(tmp_path / "var")))
    other = make_pki(tmp_path / "other-ca")
    cfg = AuditCollectorConfig(
        host="127.0.0.1",
        port=collector.port,
        ca_file=str(other.ca),
        cert_file=str(pki.client_cert),
        key_file=str(pki.client_key),
        server_hostname="localhost",
    )
    exporter = AuditExporter(cfg, ledger.audit, tmp_path / "cursor.json")
    _append(ledger, 1, 1_765_000_000.0)
    with pytest.raises(DependencyUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        exporter.round()
    assert exporter.cursor == 0 and not (tmp_path / "cursor.json").exists()
