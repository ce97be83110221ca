-- Which of a batch's corrections ($1: their ids) the ledger already holds.
SELECT correction_id FROM {ledger} WHERE correction_id = ANY($1)
