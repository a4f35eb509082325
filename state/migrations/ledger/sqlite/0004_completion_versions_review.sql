-- depends: 0003_adopt_legacy_quarantine
-- Issue 18: completion evidence the bridge is told (MPPS steps, IAN notices), each sender's
-- standing, SR version states, and review flags a person can resolve.

-- MPPS (PS3.4 F): one row per Performed Procedure Step SOP Instance, as N-CREATE / N-SET
-- left it. `step` is ProcedureStep.to_json(): UIDs, codes and AE titles, no patient identity.
CREATE TABLE IF NOT EXISTS procedure_steps (
    sop_instance_uid TEXT PRIMARY KEY,
    status           TEXT NOT NULL,
    calling_ae       TEXT NOT NULL DEFAULT '',
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    step             TEXT NOT NULL
);
-- A step may name several studies (the group case).
CREATE TABLE IF NOT EXISTS procedure_step_studies (
    step_uid  TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    PRIMARY KEY (step_uid, study_uid)
);
CREATE INDEX IF NOT EXISTS procedure_step_studies_by_study ON procedure_step_studies (study_uid);

-- IAN (PS3.4 R): one row per notification; `notice` is AvailabilityNotice.to_json().
CREATE TABLE IF NOT EXISTS availability_notices (
    sop_instance_uid TEXT PRIMARY KEY,
    study_uid        TEXT NOT NULL,
    calling_ae       TEXT NOT NULL DEFAULT '',
    received_at      REAL NOT NULL,
    notice           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS availability_notices_by_study ON availability_notices (study_uid);

-- How far each sender's completion rule was tightened (core.sources.SenderStanding).
CREATE TABLE IF NOT EXISTS sender_standings (
    calling_ae TEXT PRIMARY KEY,
    strictness INTEGER NOT NULL DEFAULT 0,
    early      INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
-- Each job version opened by instances after an earlier completion is judged once.
CREATE TABLE IF NOT EXISTS late_arrivals (
    job_id     INTEGER PRIMARY KEY,
    study_uid  TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    kind       TEXT NOT NULL,               -- 'early' | 'late' (core.sources.ArrivalKind)
    at         REAL NOT NULL
);

-- SR versions (core.versions): where each one's delivery stands.
ALTER TABLE sr_results ADD COLUMN state TEXT NOT NULL DEFAULT 'pending';
ALTER TABLE sr_results ADD COLUMN incomplete INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sr_results ADD COLUMN updated_at REAL NOT NULL DEFAULT 0;
-- Our own results come back when a PACS forwards everything it stores: found by SOP UID.
CREATE INDEX IF NOT EXISTS outbox_by_sop ON outbox (sop_instance_uid);
UPDATE sr_results SET state = 'delivered'
 WHERE sop_instance_uid IN (SELECT sop_instance_uid FROM outbox WHERE state = 'delivered');

-- Review flags: who resolved them, how and why; `subject` tells flags of one kind and study
-- apart where there is no other study (the model family and version of a capped SR, the
-- sender of a tightened rule). SQLite cannot change a table's UNIQUE constraint: rebuild.
CREATE TABLE review_flags_v4 (
    flag_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at              REAL NOT NULL,
    kind            TEXT NOT NULL,
    study_uid       TEXT NOT NULL,
    other_study_uid TEXT NOT NULL DEFAULT '',
    subject         TEXT NOT NULL DEFAULT '',
    job_id          INTEGER,
    detail          TEXT NOT NULL DEFAULT '{}',
    resolved        INTEGER NOT NULL DEFAULT 0,
    resolution      TEXT NOT NULL DEFAULT '',
    resolved_by     TEXT NOT NULL DEFAULT '',
    resolved_at     REAL,
    reason          TEXT NOT NULL DEFAULT '',
    UNIQUE (kind, study_uid, other_study_uid, subject)
);
INSERT INTO review_flags_v4 (flag_id, at, kind, study_uid, other_study_uid, job_id, detail, resolved)
SELECT flag_id, at, kind, study_uid, other_study_uid, job_id, detail, resolved FROM review_flags;
DROP TABLE review_flags;
ALTER TABLE review_flags_v4 RENAME TO review_flags;
CREATE INDEX IF NOT EXISTS review_flags_by_study ON review_flags (study_uid);
