-- Ingress cells (the cluster issue): each job and instance belongs to the ingress node whose
-- spool holds its files; that cell's stage actors lease it. '' is the one-machine cell.
ALTER TABLE jobs ADD COLUMN cell TEXT NOT NULL DEFAULT '';
ALTER TABLE instances ADD COLUMN cell TEXT NOT NULL DEFAULT '';
