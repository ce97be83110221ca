-- One side of the key join (src/diff/pairs.rs, the fast path of queries/keys.sql):
-- each row with a complete key, reduced to its key, the fingerprint of its compared
-- fields when it is live (NULL when soft-deleted), and the raw mapped columns the
-- pairs carry to the diff, if any, so that the diff need not read the snapshot again.
-- The join holds the source side in memory and streams the replica side past it,
-- keeping only the pairs that need a look: a key on one side only, or on both with a
-- different liveness or fingerprint. queries/key_pairs_summary.sql turns the pairs into
-- the key summary.
SELECT {keys},
       CASE WHEN {live} THEN {fingerprint} END AS "__h"{values}
FROM {table} AS t
WHERE {key_is_complete}
