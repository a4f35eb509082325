"""Issue #16: HL7 v2 as hospitals really send it, through the real MLLP listener.

The corpus (``tests/data/hl7``, one file per message, as published byte for byte, and
``manifest.json`` naming each one's source, licence, expected ACK codes, first ERR and effect on
the context store) goes over ONE persistent MLLP connection in manifest order. Then all of it
is sent again: every answer is the same and nothing in the store changes (re-sends are counted,
and a frame answered AR is logged again in ``hl7_rejected``, but nothing is applied twice).
Every log record of the run, from every logger at DEBUG, is checked for field values. The run
is made on both backends of the context store and the ledger (SQLite, PostgreSQL; issue 9).
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import date
from pathlib import Path
from typing import Any

import hl7
import pytest

from actors.adapters.hl7_inbox import Hl7Listener
from actors.adapters.mllp import END, START, MllpClient
from core.config import Hl7Config, MllpListenerConfig
from core.identifiers import hash_identifier
from state.column_seal import sealer_of
from state.context_store import ContextReader, open_context
from state.ledger import open_ledger
from tests.hl7_messages import adt

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[1] / "data" / "hl7"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text(encoding="utf-8"))
KEY = b"corpus-key"


def test_the_corpus_is_large_and_varied_enough():
    real = [m for m in MANIFEST["messages"] if "fuzzed" not in m["features"]]
    assert len(real) >= 50
    versions = {m["version"] for m in real}
    assert {"2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8"} <= versions
    features = {f for m in real for f in m["features"]}
    assert {"lf", "crlf", "cr", "z-segment", "escapes", "bom", "non-ascii"} <= features
    assert {"AA", "AE", "AR", "CA", "CR"} & {a for m in real for a in m["acks"]} >= {"AA", "AE", "AR"}
    for m in MANIFEST["messages"]:
        assert (CORPUS / m["file"]).is_file(), m["file"]
        assert m["source"]["url"].startswith("https://github.com/") and m["licence"]


def _rows(reader: ContextReader, sql: str) -> list[dict[str, Any]]:
    """Rows of the store behind the reader (tables the product has no view of)."""
    with reader.db.read() as tx:
        return tx.all(sql)


def _state(reader: ContextReader) -> dict[str, int]:
    out = {r["type"]: int(r["n"]) for r in _rows(reader, "SELECT type, COUNT(*) AS n FROM resources GROUP BY type")}
    [updated] = _rows(reader, "SELECT COALESCE(SUM(version - 1), 0) AS n FROM resources")
    out["updated"] = int(updated["n"])
    for table in ("hl7_inbox", "hl7_conflicts", "hl7_rejected"):
        out[table] = reader.count(table)
    return out


def _snapshot(reader: ContextReader) -> dict[str, list[Any]]:
    """Everything a re-send must leave alone (the counters of re-sends aside)."""
    queries = {
        "resources": "SELECT type, id, version, json FROM resources ORDER BY type, id",
        "orders": "SELECT * FROM orders ORDER BY service_request_id",
        "encounters": "SELECT encounter_id, patient_id FROM encounters ORDER BY encounter_id",
        "patient_keys": "SELECT * FROM patient_keys ORDER BY patient_key, patient_id",
        "identities": "SELECT * FROM patient_identities ORDER BY identity_key, patient_id",
        "merges": "SELECT prior_id, survivor_id FROM patient_merges ORDER BY prior_id",
        "inbox": "SELECT seq, control_id, status, error_code, error_location, sha256 FROM hl7_inbox ORDER BY seq",
        "conflicts": "SELECT seq, control_id, sha256, inbox_seq FROM hl7_conflicts ORDER BY seq",
    }
    return {name: [tuple(r.values()) for r in _rows(reader, sql)] for name, sql in queries.items()}


def _replies(client: MllpClient, count: int) -> list[tuple[str, str, dict[str, str] | None]]:
    """MSA-1, MSA-2 and the first ERR (code, location) of ``count`` replies."""
    out = []
    for reply in client.receive(count):
        message = hl7.parse(reply.decode())
        msa = message.segment("MSA")
        out.append((str(msa(1)), str(msa(2)), _err(message)))
    return out


def _err(message: hl7.Message) -> dict[str, str] | None:
    try:
        seg = message.segment("ERR")
    except KeyError:
        return None
    if len(seg) > 3 and str(seg(3)):  # v2.5+: ERR-2 location, ERR-3 code, ERR-4 severity
        return {"code": str(seg(3)(1)(1)), "location": str(seg(2)), "severity": str(seg(4)) if len(seg) > 4 else "E"}
    eld = str(seg(1)).split("^")  # before v2.5: ERR-1 = segment^sequence^field^code&text&table
    return {"code": eld[3].split("&")[0], "location": "^".join(eld[:3]), "severity": "E"}


def _send_corpus(listener: Hl7Listener, client: MllpClient, reader: ContextReader, already: int) -> list[str]:
    """Send every message once; return what differs from the manifest."""
    problems = []
    for n, m in enumerate(MANIFEST["messages"], start=already + 1):
        before = _state(reader)
        client.send_raw(START + (CORPUS / m["file"]).read_bytes() + END)
        deadline = time.monotonic() + 15
        while sum(listener.counts.values()) < n and time.monotonic() < deadline:
            time.sleep(0.002)  # the handler has answered (or, NE|NE, decided not to)
        got = _replies(client, len(m["acks"]))
        codes = [c for c, _, _ in got]
        if codes != m["acks"]:
            problems.append(f"{m['file']}: ACKs {codes}, expected {m['acks']}")
        if got and (got[0][1] != m["msa2"] or got[0][2] != m["err"]):
            problems.append(f"{m['file']}: MSA-2/ERR {got[0][1:]}, expected {m['msa2']}, {m['err']}")
        after = _state(reader)
        effect = {
            k: after.get(k, 0) - before.get(k, 0)
            for k in set(after) | set(before)
            if after.get(k, 0) != before.get(k, 0)
        }
        if already == 0 and effect != m["effect"]:
            problems.append(f"{m['file']}: effect {effect}, expected {m['effect']}")
    return problems


def _check_identities(reader: ContextReader) -> None:
    """What the corpus shows about identity (issue #16, 1 and 2)."""
    rows = _rows(reader, "SELECT json FROM resources WHERE type = 'Patient'")
    patients = [json.loads(sealer_of(reader.db).open_text(r["json"])) for r in rows]  # sealed at rest
    systems = {i.get("system") for p in patients for i in p["identifier"]}
    assert "urn:oid:1.3.6.1.4.1.12559.11.1.4.1.2" in systems  # IHE PAM: DDS&<OID>&ISO
    # 123456789 is an SSN (authority USSSA) in one sample and a bare MRN of NINTENDO in
    # another: two people, and a study with the bare Patient ID 123456789 joins neither.
    holders = [p for p in patients if any(i["value"] == "123456789" for i in p["identifier"])]
    assert len(holders) == 2
    assert reader.find("", [], [hash_identifier("123456789", KEY)], date(2005, 1, 10), 9999) is None


def _field_values() -> tuple[set[str], set[str]]:
    """Values of the corpus that could name a person (every component of every segment but
    MSH, of at least 4 characters and with a letter in it, or of at least 6 digits), and the
    control IDs (MSH-10), which are logged on purpose (DESIGN.md, Privacy)."""
    values: set[str] = set()
    control_ids: set[str] = set()
    for m in MANIFEST["messages"]:
        text = (CORPUS / m["file"]).read_bytes().decode("utf-8", "replace").lstrip("\ufeff")
        for seg in re.split(r"[\r\n]+", text):
            if seg.startswith("MSH") and len(seg) > 3:
                fields = seg.split(seg[3])
                control_ids.update(fields[9:10])
                continue
            for v in re.split(r"[|^~&\\]", seg[4:]):
                v = v.strip()
                if (len(v) >= 4 and re.search(r"[A-Za-z]", v)) or (len(v) >= 6 and v.isdigit()):
                    values.add(v)
    return values - control_ids, control_ids


@pytest.fixture
def corpus_listener(backend, storage_for):
    storage = storage_for(backend)
    cfg = Hl7Config(listener=MllpListenerConfig(port=0), **MANIFEST["listener"])
    ledger = open_ledger(storage)
    listener = Hl7Listener(cfg, open_context(storage, writer=True), ledger, KEY)
    listener.start()
    reader = ContextReader(open_context(storage))
    yield listener, ledger, reader
    listener.stop()
    reader.close()
    ledger.close()


def test_the_corpus_end_to_end_over_one_connection_then_again(corpus_listener, caplog):
    """Issue #16: each message gets its expected ACKs and effect; re-sent, nothing changes;
    and no field value reaches a log line (issue #16, 8)."""
    caplog.set_level(logging.DEBUG)  # the root logger: every library's records reach caplog
    listener, ledger, reader = corpus_listener
    client = MllpClient("127.0.0.1", listener.port, timeout_s=15)
    try:
        assert _send_corpus(listener, client, reader, 0) == []
        first, rejected = _snapshot(reader), reader.count("hl7_rejected")
        assert _send_corpus(listener, client, reader, len(MANIFEST["messages"])) == []
        assert _snapshot(reader) == first  # nothing applied twice, nothing new
        assert reader.count("hl7_rejected") == 2 * rejected  # each AR'd frame is logged again
        # after the frames that asked for no ACK, the next reply still answers the next frame
        client.send_raw(START + adt("A01", "SENTINEL").encode() + END)
        assert [(c, control) for c, control, _ in _replies(client, 1)] == [("AA", "SENTINEL")]
    finally:
        client.close()
    assert listener._server.connections == 1
    _check_identities(reader)
    listener.audit_once()
    assert ledger.audit.verify() is None
    values, control_ids = _field_values()
    logged = caplog.text
    for control_id in sorted(control_ids - {""}, key=len, reverse=True):
        logged = logged.replace(control_id, "<MSH-10>")
    leaked = sorted(v for v in values if v in logged)
    assert leaked == [], f"field values in the log: {leaked[:10]}"
