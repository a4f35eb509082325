-- Retention (issue 13): when the purge loop deleted an instance's spool file (core.retention).
-- A purged instance is also marked discarded, so a later version of its study leaves it out.
ALTER TABLE instances ADD COLUMN purged_at DOUBLE PRECISION;
