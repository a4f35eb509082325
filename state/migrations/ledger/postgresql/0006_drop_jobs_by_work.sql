-- jobs_by_lease_order (0004) serves leasing and every per-state query; a second index on
-- (state, not_before) only cost one more page write on every transition.
DROP INDEX IF EXISTS jobs_by_work;
