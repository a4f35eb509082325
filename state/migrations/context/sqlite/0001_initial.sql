-- The context store: the HL7 bridge's PHI vault (raw messages, FHIR R4 resources).
-- Kept apart from the ledger, which holds keyed hashes only; the ledger's audit trail records
-- every read of this file. The schema as it stood before migrations (context_schema.sql,
-- issues 6 and 16), every statement IF NOT EXISTS, so an existing context.sqlite is adopted
-- as it is. Never edit: a change is a new migration.
CREATE TABLE IF NOT EXISTS hl7_inbox (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    sending_app       TEXT NOT NULL,
    sending_facility  TEXT NOT NULL,
    control_id        TEXT NOT NULL,
    message_type      TEXT NOT NULL,
    received_at       REAL NOT NULL,
    peer              TEXT NOT NULL DEFAULT '',
    sha256            TEXT NOT NULL,          -- content digest (core.hl7.content_digest)
    raw               BLOB NOT NULL,          -- exactly as received (PHI)
    status            TEXT NOT NULL,          -- 'applied' | 'invalid'
    error_code        TEXT NOT NULL DEFAULT '',
    error_location    TEXT NOT NULL DEFAULT '',
    error             TEXT NOT NULL DEFAULT '',  -- may quote received values (PHI)
    resends           INTEGER NOT NULL DEFAULT 0,
    patient_key       TEXT NOT NULL DEFAULT '',
    accession_key     TEXT NOT NULL DEFAULT '',
    audited           INTEGER NOT NULL DEFAULT 0,
    UNIQUE (sending_app, sending_facility, control_id)   -- idempotency (MSH-3, MSH-4, MSH-10)
);
CREATE INDEX IF NOT EXISTS hl7_inbox_unaudited ON hl7_inbox (audited, seq);

CREATE TABLE IF NOT EXISTS hl7_rejected (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at    REAL NOT NULL,
    peer           TEXT NOT NULL DEFAULT '',
    control_id     TEXT NOT NULL DEFAULT '',
    message_type   TEXT NOT NULL DEFAULT '',
    size           INTEGER NOT NULL,
    sha256         TEXT NOT NULL,
    head           BLOB NOT NULL,              -- the first bytes, for inspection (PHI)
    error_code     TEXT NOT NULL,
    error_location TEXT NOT NULL DEFAULT '',
    error          TEXT NOT NULL,
    audited        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS hl7_rejected_unaudited ON hl7_rejected (audited, seq);

CREATE TABLE IF NOT EXISTS hl7_conflicts (      -- a used (MSH-3, MSH-4, MSH-10), other content
    seq               INTEGER PRIMARY KEY,
    received_at       REAL NOT NULL,
    peer              TEXT NOT NULL DEFAULT '',
    sending_app       TEXT NOT NULL,
    sending_facility  TEXT NOT NULL,
    control_id        TEXT NOT NULL,
    message_type      TEXT NOT NULL,
    sha256            TEXT NOT NULL,          -- content digest of this message
    raw               BLOB NOT NULL,          -- exactly as received, for review (PHI)
    inbox_seq         INTEGER NOT NULL,       -- the applied message that owns the control ID
    resends           INTEGER NOT NULL DEFAULT 0,
    audited           INTEGER NOT NULL DEFAULT 0,
    UNIQUE (sending_app, sending_facility, control_id, sha256)
);
CREATE INDEX IF NOT EXISTS hl7_conflicts_unaudited ON hl7_conflicts (audited, seq);

CREATE TABLE IF NOT EXISTS resources (
    type        TEXT NOT NULL,
    id          TEXT NOT NULL,
    version     INTEGER NOT NULL DEFAULT 1,
    updated_at  REAL NOT NULL,
    json        TEXT NOT NULL,
    PRIMARY KEY (type, id)
);

CREATE TABLE IF NOT EXISTS patient_keys (      -- keyed hash of a bare PID-3 ID -> Patient id
    patient_key TEXT NOT NULL,                  -- (the DICOM join's index; never rebinds)
    patient_id  TEXT NOT NULL,
    PRIMARY KEY (patient_key, patient_id)
);

CREATE TABLE IF NOT EXISTS patient_identities ( -- keyed hash of (CX.1, authority, CX.5) -> Patient
    identity_key TEXT NOT NULL,
    patient_id   TEXT NOT NULL,
    PRIMARY KEY (identity_key, patient_id)
);

CREATE TABLE IF NOT EXISTS patient_merges (    -- ADT^A40: prior -> surviving patient
    prior_id    TEXT PRIMARY KEY,
    survivor_id TEXT NOT NULL,
    merged_at   REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS encounters (
    encounter_id TEXT PRIMARY KEY,
    patient_id   TEXT NOT NULL,
    updated_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS encounters_by_patient ON encounters (patient_id, updated_at);

CREATE TABLE IF NOT EXISTS orders (
    service_request_id TEXT PRIMARY KEY,
    accession_key      TEXT NOT NULL,
    study_uid          TEXT NOT NULL DEFAULT '',
    patient_id         TEXT NOT NULL,
    encounter_id       TEXT NOT NULL DEFAULT '',
    order_date         TEXT NOT NULL DEFAULT '',
    status             TEXT NOT NULL,
    updated_at         REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_by_accession ON orders (accession_key);
CREATE INDEX IF NOT EXISTS orders_by_study ON orders (study_uid);
CREATE INDEX IF NOT EXISTS orders_by_patient ON orders (patient_id);
