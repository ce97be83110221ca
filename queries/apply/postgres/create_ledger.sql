-- The ledger: one row per correction applied (or found stale, or failed), written in
-- the same transaction as the change it records.
CREATE TABLE IF NOT EXISTS {ledger} (correction_id text PRIMARY KEY,
  job text NOT NULL,
  run_id text NOT NULL,
  entity text NOT NULL,
  op text NOT NULL,
  outcome text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now())
