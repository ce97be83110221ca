-- The key summary (the output of queries/keys.sql) from the pairs of
-- queries/key_pairs.sql: one row per key, with each side's row and live row counts and
-- the XOR of the live rows' fingerprints.
SELECT {keys},
       sum("__sr") AS "__source_rows",
       sum("__sl") AS "__source_live",
       sum("__rr") AS "__replica_rows",
       sum("__rl") AS "__replica_live",
       bit_xor("__x") AS "__xor"
FROM {pairs}
GROUP BY {keys}
