-- The replica's live rows as the diff joins them in, when the key summary was a join:
-- read from the pairs of queries/key_pairs.sql, which carry them, instead of the
-- replica snapshot. The same columns as queries/payload.sql.
SELECT {keys}, {values}
FROM {pairs}
WHERE "__rl" = 1
