-- Retention purges in pages (issue 14 follow-up): a round reads the delivered jobs oldest
-- first, a page at a time, and each page's unpurged instances. Without these, every page was
-- a scan of all instances and a sort; a round was capped at 1,000 files per store.
CREATE INDEX IF NOT EXISTS jobs_by_state_updated ON jobs (state, updated_at, job_id);
CREATE INDEX IF NOT EXISTS instances_unpurged_by_job ON instances (job_id) WHERE purged_at IS NULL;
