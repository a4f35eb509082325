-- Results for readers (issue 12): alert items, reader reviews, verified SRs, views, policy loads.

-- One row per finding and image-quality flag of each SR version, written with the version in
-- the SR writer's transaction: what the alert policy (core.alert_policy.AlertItem) judges.
-- item_id orders the pushes (server-sent events and webhooks read it as a cursor).
CREATE TABLE IF NOT EXISTS alert_items (
    item_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    sr_uid         TEXT NOT NULL,             -- sr_results.sop_instance_uid
    study_uid      TEXT NOT NULL,
    family         TEXT NOT NULL,
    finding        TEXT NOT NULL,             -- finding or quality-flag key
    probability    REAL NOT NULL,
    present        INTEGER NOT NULL,
    critical       INTEGER NOT NULL,
    quality_flag   INTEGER NOT NULL,
    order_priority TEXT,                      -- stat / asap / routine, or NULL when unknown
    created_at     REAL NOT NULL,
    UNIQUE (sr_uid, finding, quality_flag)
);
CREATE INDEX IF NOT EXISTS alert_items_by_study ON alert_items (study_uid, family);
CREATE INDEX IF NOT EXISTS alert_items_by_time ON alert_items (created_at);

-- A reader's submission on one AI SR version: the per-finding decisions below, the final
-- diagnosis, and the verified SR (core.sr_verified) it becomes, delivered to the PACS from here.
CREATE TABLE IF NOT EXISTS review_submissions (
    submission_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    sr_uid          TEXT NOT NULL,            -- the AI SR version reviewed
    study_uid       TEXT NOT NULL,
    family          TEXT NOT NULL,
    model_version   TEXT NOT NULL,            -- family@version of the AI result
    reader          TEXT NOT NULL,            -- the principal's subject
    reader_name     TEXT NOT NULL DEFAULT '', -- as shown in the verified SR (Verifying Observer)
    version         INTEGER NOT NULL,         -- 1, 2, ... per (sr_uid, reader)
    final_diagnosis TEXT NOT NULL DEFAULT '', -- sealed (state.column_seal)
    heatmap_viewed  INTEGER NOT NULL DEFAULT 0,
    submitted_at    REAL NOT NULL,
    verified_uid    TEXT NOT NULL DEFAULT '', -- SOP Instance UID of the verified SR once built
    verified_path   TEXT NOT NULL DEFAULT '', -- its file in the outbox directory
    state           TEXT NOT NULL DEFAULT 'pending',  -- pending / delivered / superseded / dead
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT NOT NULL DEFAULT '',
    delivered_at    REAL,
    UNIQUE (sr_uid, reader, version)
);
CREATE INDEX IF NOT EXISTS review_submissions_by_state ON review_submissions (state, submission_id);

-- One decision per reader per finding per SR version (a re-review replaces it: the newest
-- submission_id wins; earlier submissions stay in review_submissions and the audit trail).
CREATE TABLE IF NOT EXISTS finding_reviews (
    sr_uid        TEXT NOT NULL,
    finding       TEXT NOT NULL,
    reader        TEXT NOT NULL,
    submission_id INTEGER NOT NULL,
    study_uid     TEXT NOT NULL,
    family        TEXT NOT NULL,
    model_version TEXT NOT NULL,
    assessment    TEXT NOT NULL,              -- agree / disagree / override
    final_present INTEGER NOT NULL,
    comment       TEXT NOT NULL DEFAULT '',   -- sealed (state.column_seal)
    reviewed_at   REAL NOT NULL,
    PRIMARY KEY (sr_uid, finding, reader)
);
CREATE INDEX IF NOT EXISTS finding_reviews_by_study ON finding_reviews (study_uid);
CREATE INDEX IF NOT EXISTS finding_reviews_by_time ON finding_reviews (reviewed_at);

-- Who opened which result (utilisation: studies whose results were opened).
CREATE TABLE IF NOT EXISTS result_views (
    sr_uid         TEXT NOT NULL,
    reader         TEXT NOT NULL,
    study_uid      TEXT NOT NULL,
    first_at       REAL NOT NULL,
    last_at        REAL NOT NULL,
    heatmap_viewed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sr_uid, reader)
);
CREATE INDEX IF NOT EXISTS result_views_by_study ON result_views (study_uid);

-- Each alert policy taken or refused (its SHA-256), in order: a change is recorded (with its audit
-- event) by the first replica that sees it, so one event per change however many replicas load it;
-- going back to an earlier policy is a change too. A refused digest is recorded (and audited) once.
CREATE TABLE IF NOT EXISTS alert_policy_versions (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    digest    TEXT NOT NULL,
    state     TEXT NOT NULL DEFAULT 'taken',  -- taken / rejected
    loaded_at REAL NOT NULL,
    changes   TEXT NOT NULL DEFAULT '[]'      -- JSON list of what changed (taken) or the problems (rejected)
);
CREATE INDEX IF NOT EXISTS alert_policy_versions_by_digest ON alert_policy_versions (digest, state);

-- Critical findings paged to each role's webhook (durable outbox with retries).
CREATE TABLE IF NOT EXISTS alert_pushes (
    push_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id      INTEGER NOT NULL,            -- alert_items.item_id
    role         TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending',   -- pending / delivered / dead
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL,
    last_error   TEXT NOT NULL DEFAULT '',
    created_at   REAL NOT NULL,
    delivered_at REAL,
    UNIQUE (item_id, role)
);
CREATE INDEX IF NOT EXISTS alert_pushes_due ON alert_pushes (state, next_at);

-- How far each reader of alert_items has got (the webhook dispatcher: name 'webhooks').
CREATE TABLE IF NOT EXISTS alert_cursors (
    name    TEXT PRIMARY KEY,
    item_id INTEGER NOT NULL
);
