-- Accuracy monitoring over time (issue 12): each model version and month whose readers'
-- agreement rate fell below clinical.agreement_floor, recorded once (one audit event however
-- often the auditor's loop finds it, across restarts).
CREATE TABLE IF NOT EXISTS agreement_alerts (
    model_version  TEXT NOT NULL,             -- family@version
    month          TEXT NOT NULL,             -- YYYY-MM (UTC)
    agreement_rate DOUBLE PRECISION NOT NULL,
    reviews        INTEGER NOT NULL,
    floor          DOUBLE PRECISION NOT NULL,
    alerted_at     DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (model_version, month)
);
