-- The EHR outbox as it stood before migrations (issue 6): adopted unchanged. Never edit.
CREATE TABLE IF NOT EXISTS ehr_reports (
    item_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    sr_uid       TEXT NOT NULL UNIQUE,
    job_id       INTEGER NOT NULL,
    study_uid    TEXT NOT NULL,
    priority     INTEGER NOT NULL DEFAULT 0,
    bundle       TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending',   -- 'pending' | 'delivered' | 'dead'
    attempts     INTEGER NOT NULL DEFAULT 0,        -- refusals: spend the retry budget
    waits        INTEGER NOT NULL DEFAULT 0,        -- consecutive "endpoint down" waits
    not_before   REAL NOT NULL,
    last_error   TEXT NOT NULL DEFAULT '',
    created_at   REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS ehr_reports_due ON ehr_reports (state, not_before);
CREATE TABLE IF NOT EXISTS ehr_meta (name TEXT PRIMARY KEY, value REAL NOT NULL);
