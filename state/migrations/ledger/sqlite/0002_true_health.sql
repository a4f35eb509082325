-- Issue 9: health says whether each loop's thread is alive and when it last did work.
ALTER TABLE stage_health ADD COLUMN last_work_at REAL NOT NULL DEFAULT 0;
ALTER TABLE stage_health ADD COLUMN loops TEXT NOT NULL DEFAULT '[]';
