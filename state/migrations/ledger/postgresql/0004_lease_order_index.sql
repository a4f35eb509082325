-- Leasing walks due jobs of one state in priority order: an index in that order lets it stop
-- after the few it takes, instead of sorting the whole queue on every lease (bench_ledger).
CREATE INDEX IF NOT EXISTS jobs_by_lease_order ON jobs (state, priority DESC, created_at, job_id);
