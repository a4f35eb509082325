"""The audit trail becomes signed and append-only (issue 13).

Each entry gains the id of the key that signed it and its Ed25519 signature
(``core.audit_seal``). Entries already stored stay as they are, unsigned: ``audit_legacy``
records the last of them, so a verifier accepts those (hash chain only) and requires a
signature on every later one. Triggers refuse UPDATE and DELETE on the trail and any change to
the legacy mark: SQLite chains and signs inside the appending transaction, so nothing ever
updates a stored entry.
"""

from yoyo import step

__depends__ = {"0010_model_rollout"}

_REFUSE = "BEGIN SELECT RAISE(ABORT, 'audit is append-only: {op} refused'); END"

steps = [
    step("ALTER TABLE audit ADD COLUMN key_id TEXT"),
    step("ALTER TABLE audit ADD COLUMN sig TEXT"),
    step("CREATE TABLE audit_legacy (until_seq INTEGER NOT NULL)"),
    step("INSERT INTO audit_legacy (until_seq) SELECT COALESCE(MAX(seq), 0) FROM audit"),
    step(f"CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit {_REFUSE.format(op='UPDATE')}"),
    step(f"CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit {_REFUSE.format(op='DELETE')}"),
    step(f"CREATE TRIGGER audit_legacy_no_insert BEFORE INSERT ON audit_legacy {_REFUSE.format(op='INSERT')}"),
    step(f"CREATE TRIGGER audit_legacy_no_update BEFORE UPDATE ON audit_legacy {_REFUSE.format(op='UPDATE')}"),
    step(f"CREATE TRIGGER audit_legacy_no_delete BEFORE DELETE ON audit_legacy {_REFUSE.format(op='DELETE')}"),
]
