-- Versions of a model family side by side (issue 17): which version is live (set by an
-- operator's promote or rollback; no row: the family entry's own version), which versions are
-- halted (rolled back from, or superseded by a promotion: no studies until made live again),
-- and what each shadow version said beside the live one (never sent to the PACS).
CREATE TABLE IF NOT EXISTS model_live (
    family  TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    actor   TEXT NOT NULL,
    reason  TEXT NOT NULL DEFAULT '',
    at      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS model_halts (
    family  TEXT NOT NULL,
    version TEXT NOT NULL,
    cause   TEXT NOT NULL,                 -- core.rollout.HaltCause: rolled_back, superseded
    actor   TEXT NOT NULL,
    reason  TEXT NOT NULL DEFAULT '',
    at      REAL NOT NULL,
    PRIMARY KEY (family, version)
);
CREATE TABLE IF NOT EXISTS shadow_results (
    job_id         INTEGER NOT NULL,
    family         TEXT NOT NULL,
    shadow_version TEXT NOT NULL,
    study_uid      TEXT NOT NULL,
    live_version   TEXT NOT NULL,          -- the version whose result was used
    prediction     TEXT NOT NULL,          -- the shadow's Prediction (RecordCodec; no heatmaps)
    comparison     TEXT NOT NULL,          -- core.rollout.ShadowComparison (core.codec record)
    created_at     REAL NOT NULL,
    PRIMARY KEY (job_id, family, shadow_version)
);
CREATE INDEX IF NOT EXISTS shadow_results_by_version ON shadow_results (family, shadow_version);
CREATE INDEX IF NOT EXISTS sr_results_by_model ON sr_results (family, model_version);
