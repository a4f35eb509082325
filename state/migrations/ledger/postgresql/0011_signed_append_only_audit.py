"""The audit trail becomes signed and append-only (issue 13).

Each entry gains the id of the key that signed it and its Ed25519 signature
(``core.audit_seal``). Entries already stored stay as they are, unsigned: ``audit_legacy``
records the last chained one, so a verifier accepts those (hash chain only) and requires a
signature on every later one (events still unchained now are signed when chained).

A trigger refuses DELETE, TRUNCATE and every UPDATE but the chainer's: the one that gives an
unchained row (``seq IS NULL``) its place, hashes and signature and leaves its content as it
was. The legacy mark cannot be changed at all.
"""

from yoyo import step

__depends__ = {"0010_model_rollout"}

_GUARD = """
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'audit' THEN  -- nested: OLD has no seq elsewhere
        IF OLD.seq IS NULL AND NEW.seq IS NOT NULL
           AND (NEW.event_id, NEW.at, NEW.type, NEW.actor, NEW.study_uid, NEW.sop_instance_uid,
                NEW.job_id, NEW.detail, NEW.canonical)
               IS NOT DISTINCT FROM
               (OLD.event_id, OLD.at, OLD.type, OLD.actor, OLD.study_uid, OLD.sop_instance_uid,
                OLD.job_id, OLD.detail, OLD.canonical) THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""

steps = [
    step("ALTER TABLE audit ADD COLUMN key_id TEXT, ADD COLUMN sig TEXT"),
    step("CREATE TABLE audit_legacy (until_seq BIGINT NOT NULL)"),
    step("INSERT INTO audit_legacy (until_seq) SELECT COALESCE(MAX(seq), 0) FROM audit"),
    step(_GUARD),
    step(
        "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit"
        " FOR EACH ROW EXECUTE FUNCTION audit_append_only()"
    ),
    step(
        "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()"
    ),
    step(
        "CREATE TRIGGER audit_legacy_fixed BEFORE INSERT OR UPDATE OR DELETE ON audit_legacy"
        " FOR EACH ROW EXECUTE FUNCTION audit_append_only()"
    ),
    step(
        "CREATE TRIGGER audit_legacy_no_truncate BEFORE TRUNCATE ON audit_legacy"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()"
    ),
]
