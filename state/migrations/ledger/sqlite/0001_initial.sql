-- The ledger as it stood before migrations (issues 2-6): every statement IF NOT EXISTS, so a
-- ledger written by that release is adopted unchanged. Never edit: add a migration instead.
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid   TEXT PRIMARY KEY,
    sop_class_uid      TEXT NOT NULL,
    study_uid          TEXT NOT NULL,
    series_uid         TEXT NOT NULL,
    modality           TEXT NOT NULL DEFAULT '',
    transfer_syntax    TEXT NOT NULL DEFAULT '',
    body_part          TEXT NOT NULL DEFAULT '',
    series_description TEXT NOT NULL DEFAULT '',
    patient_key        TEXT NOT NULL DEFAULT '',
    calling_ae         TEXT NOT NULL DEFAULT '',
    path               TEXT NOT NULL,
    sha256             TEXT NOT NULL,
    size               INTEGER NOT NULL,
    received_at        REAL NOT NULL,
    override           TEXT,            -- 'quarantined' | 'skipped' | 'discarded'
    reason             TEXT NOT NULL DEFAULT '',
    job_id             INTEGER,         -- latest job covering the instance
    accession_key      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS instances_by_study ON instances (study_uid);

CREATE TABLE IF NOT EXISTS jobs (
    job_id           INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid        TEXT NOT NULL,
    version          INTEGER NOT NULL,
    state            TEXT NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,   -- failures that spend the retry budget
    waits            INTEGER NOT NULL DEFAULT 0,   -- consecutive "peer unavailable" waits
    not_before       REAL NOT NULL,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    last_instance_at REAL NOT NULL,
    lease_owner      TEXT NOT NULL DEFAULT '',
    leased_until     REAL NOT NULL DEFAULT 0,
    reason           TEXT NOT NULL DEFAULT '',
    dead_from        TEXT NOT NULL DEFAULT '',
    data             TEXT NOT NULL DEFAULT '{}',
    UNIQUE (study_uid, version)
);
CREATE INDEX IF NOT EXISTS jobs_by_work ON jobs (state, not_before);

CREATE TABLE IF NOT EXISTS job_instances (
    job_id           INTEGER NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    PRIMARY KEY (job_id, sop_instance_uid)
);

CREATE TABLE IF NOT EXISTS outbox (
    item_id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id           INTEGER NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid    TEXT NOT NULL,
    kind             TEXT NOT NULL,
    family           TEXT NOT NULL DEFAULT '',
    path             TEXT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending',   -- 'pending' | 'delivered'
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT NOT NULL DEFAULT '',
    created_at       REAL NOT NULL,
    delivered_at     REAL,
    ehr_queued       INTEGER NOT NULL DEFAULT 0,
    series_uid       TEXT NOT NULL DEFAULT '',
    UNIQUE (job_id, sop_instance_uid)
);

CREATE TABLE IF NOT EXISTS audit (
    seq              INTEGER PRIMARY KEY,
    at               REAL NOT NULL,
    type             TEXT NOT NULL,
    actor            TEXT NOT NULL,
    study_uid        TEXT NOT NULL DEFAULT '',
    sop_instance_uid TEXT NOT NULL DEFAULT '',
    job_id           INTEGER,
    detail           TEXT NOT NULL DEFAULT '{}',
    canonical        TEXT NOT NULL,
    prev_hash        TEXT NOT NULL,
    hash             TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_study ON audit (study_uid);

CREATE TABLE IF NOT EXISTS ai_switches (
    scope    TEXT NOT NULL,     -- 'study' | 'modality'
    key      TEXT NOT NULL,
    enabled  INTEGER NOT NULL,
    reason   TEXT NOT NULL DEFAULT '',
    actor    TEXT NOT NULL DEFAULT '',
    at       REAL NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE TABLE IF NOT EXISTS stage_health (
    stage        TEXT PRIMARY KEY,
    pid          INTEGER NOT NULL,
    heartbeat_at REAL NOT NULL,
    processed    INTEGER NOT NULL DEFAULT 0,
    failures     INTEGER NOT NULL DEFAULT 0,
    in_flight    INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT NOT NULL DEFAULT '',
    status       TEXT NOT NULL DEFAULT 'ok'
);

-- Quarantine (issue #4): one entry per instance that failed validation. Shown as Q<qid>.
CREATE TABLE IF NOT EXISTS quarantine (
    qid              INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    study_uid        TEXT NOT NULL,
    series_uid       TEXT NOT NULL,
    job_id           INTEGER,                        -- the job that last held it
    state            TEXT NOT NULL DEFAULT 'held',   -- 'held' | 'released' | 'discarded'
    codes            TEXT NOT NULL DEFAULT '[]',     -- JSON: sorted reason codes
    reasons          TEXT NOT NULL DEFAULT '[]',     -- JSON: [{code, message, level}]
    accepted_codes   TEXT NOT NULL DEFAULT '[]',     -- JSON: codes an operator accepted
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    decided_by       TEXT NOT NULL DEFAULT '',
    decided_at       REAL,
    decision_reason  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS quarantine_by_state ON quarantine (state);
CREATE INDEX IF NOT EXISTS quarantine_by_series ON quarantine (series_uid);
CREATE INDEX IF NOT EXISTS quarantine_by_study ON quarantine (study_uid);
-- Issue #5. Every AI result we wrote (one row per SR version): predecessor lookup for late
-- instances, prior AI results for interval change, and our own series left out of PACS counts.
CREATE TABLE IF NOT EXISTS sr_results (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid    TEXT NOT NULL,
    series_uid       TEXT NOT NULL,
    study_uid        TEXT NOT NULL,
    job_id           INTEGER NOT NULL,
    job_version      INTEGER NOT NULL,
    family           TEXT NOT NULL,
    model_name       TEXT NOT NULL,
    model_version    TEXT NOT NULL,
    predecessor_uid  TEXT NOT NULL DEFAULT '',   -- the SR version this one supersedes
    prediction       TEXT NOT NULL DEFAULT '{}', -- Prediction.to_json()
    created_at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sr_results_by_study ON sr_results (study_uid, family);

-- Prior series we asked the PACS to send us: their instances are kept (spool + ledger), set
-- aside as 'skipped' with the reason, and never start a job of their own.
CREATE TABLE IF NOT EXISTS prior_retrievals (
    series_uid    TEXT PRIMARY KEY,
    study_uid     TEXT NOT NULL,
    for_study_uid TEXT NOT NULL,
    job_id        INTEGER,
    requested_at  REAL NOT NULL
);

-- Things a person must look at (e.g. a study with our patient's ID but another name).
CREATE TABLE IF NOT EXISTS review_flags (
    flag_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at              REAL NOT NULL,
    kind            TEXT NOT NULL,
    study_uid       TEXT NOT NULL,
    other_study_uid TEXT NOT NULL DEFAULT '',
    job_id          INTEGER,
    detail          TEXT NOT NULL DEFAULT '{}',
    resolved        INTEGER NOT NULL DEFAULT 0,
    UNIQUE (kind, study_uid, other_study_uid)
);
