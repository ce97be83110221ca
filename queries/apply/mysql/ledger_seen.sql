-- Which of a batch's corrections the ledger already holds: one ? per correction id.
SELECT correction_id FROM {ledger} WHERE correction_id IN ({placeholders})
