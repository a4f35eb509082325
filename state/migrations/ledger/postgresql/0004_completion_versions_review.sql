-- depends: 0003_adopt_legacy_quarantine
-- Issue 18: completion evidence the bridge is told (MPPS steps, IAN notices), each sender's
-- standing, SR version states, and review flags a person can resolve (as SQLite's 0004).

CREATE TABLE IF NOT EXISTS procedure_steps (
    sop_instance_uid TEXT PRIMARY KEY,
    status           TEXT NOT NULL,
    calling_ae       TEXT NOT NULL DEFAULT '',
    created_at       DOUBLE PRECISION NOT NULL,
    updated_at       DOUBLE PRECISION NOT NULL,
    step             TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS procedure_step_studies (
    step_uid  TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    PRIMARY KEY (step_uid, study_uid)
);
CREATE INDEX IF NOT EXISTS procedure_step_studies_by_study ON procedure_step_studies (study_uid);

CREATE TABLE IF NOT EXISTS availability_notices (
    sop_instance_uid TEXT PRIMARY KEY,
    study_uid        TEXT NOT NULL,
    calling_ae       TEXT NOT NULL DEFAULT '',
    received_at      DOUBLE PRECISION NOT NULL,
    notice           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS availability_notices_by_study ON availability_notices (study_uid);

CREATE TABLE IF NOT EXISTS sender_standings (
    calling_ae TEXT PRIMARY KEY,
    strictness BIGINT NOT NULL DEFAULT 0,
    early      BIGINT NOT NULL DEFAULT 0,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS late_arrivals (
    job_id     BIGINT PRIMARY KEY,
    study_uid  TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    kind       TEXT NOT NULL,
    at         DOUBLE PRECISION NOT NULL
);

ALTER TABLE sr_results ADD COLUMN state TEXT NOT NULL DEFAULT 'pending';
ALTER TABLE sr_results ADD COLUMN incomplete BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sr_results ADD COLUMN updated_at DOUBLE PRECISION NOT NULL DEFAULT 0;
-- Our own results come back when a PACS forwards everything it stores: found by SOP UID.
CREATE INDEX IF NOT EXISTS outbox_by_sop ON outbox (sop_instance_uid);
UPDATE sr_results SET state = 'delivered'
 WHERE sop_instance_uid IN (SELECT sop_instance_uid FROM outbox WHERE state = 'delivered');

ALTER TABLE review_flags DROP CONSTRAINT IF EXISTS review_flags_kind_study_uid_other_study_uid_key;
ALTER TABLE review_flags ADD COLUMN subject TEXT NOT NULL DEFAULT '';
ALTER TABLE review_flags ADD COLUMN resolution TEXT NOT NULL DEFAULT '';
ALTER TABLE review_flags ADD COLUMN resolved_by TEXT NOT NULL DEFAULT '';
ALTER TABLE review_flags ADD COLUMN resolved_at DOUBLE PRECISION;
ALTER TABLE review_flags ADD COLUMN reason TEXT NOT NULL DEFAULT '';
ALTER TABLE review_flags ADD CONSTRAINT review_flags_once UNIQUE (kind, study_uid, other_study_uid, subject);
CREATE INDEX IF NOT EXISTS review_flags_by_study ON review_flags (study_uid);
