-- One side's live rows as the diff joins them in, when the key summary was a join
-- whose pairs carry that side's columns (queries/key_side.sql): read from the pairs
-- instead of the snapshot. The same columns as queries/payload.sql.
SELECT {keys}, {values}
FROM {pairs}
WHERE {live} = 1
