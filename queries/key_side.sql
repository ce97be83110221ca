-- One side of the key merge (src/diff/merge/, the fast path of queries/keys.sql for
-- snapshots sorted by their key): each row with a complete key, reduced to its key,
-- the fingerprint of its compared fields when it is live (NULL when soft-deleted), and
-- the raw mapped columns the pairs carry to the diff, so that the diff reads neither
-- snapshot again. The merge walks both sides in key order, keeps only the pairs that
-- need a look (as queries/key_pairs.sql does) and gives them to
-- queries/key_pairs_summary.sql.
SELECT {keys},
       {live_fingerprint} AS "__h"{values}
FROM {table} AS t
WHERE {key_is_complete}
