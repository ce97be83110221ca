-- The ledger: one row per correction applied (or found stale, or failed), written in
-- the same transaction as the change it records.
CREATE TABLE IF NOT EXISTS {ledger} (correction_id varchar(32) PRIMARY KEY,
  job varchar(128) NOT NULL,
  run_id varchar(64) NOT NULL,
  entity varchar(128) NOT NULL,
  op varchar(16) NOT NULL,
  outcome varchar(16) NOT NULL,
  applied_at timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB
