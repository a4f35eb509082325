-- Ingress cells (the cluster issue): a report is sent by the EHR delivery of the cell whose
-- outbox holds its SR file. '' is the one-machine cell.
ALTER TABLE ehr_reports ADD COLUMN cell TEXT NOT NULL DEFAULT '';
