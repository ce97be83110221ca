-- One correction's outcome.
INSERT INTO {ledger} (correction_id, job, run_id, entity, op, outcome)
VALUES ($1, $2, $3, $4, $5, $6)
