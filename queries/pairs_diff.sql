-- The reconciliation of one entity after the key merge (src/diff/merge/), whose pairs
-- are the keys that need a look, in key order, each with both sides' raw mapped
-- columns: the same rows as queries/diff.sql, without its joins. The merge has
-- checked that no key repeats on either side, so every pair is one key. A side's
-- values are NULL unless its row is live; every compared field goes through its
-- comparator recon_cmp_N, which returns NULL when the two values are equal under the
-- field's rule, and keys whose fingerprints differ only within a tolerance drop out at
-- the end.
WITH p AS (
       SELECT {keys},
              CASE WHEN "__rl" = 0 THEN 'missing_in_replica'
                   WHEN "__sl" = 0 THEN 'extra_in_replica'
                   ELSE 'both' END AS "__class",
         {source_values},
         {replica_values}
       FROM {pairs}
       WHERE "__sl" + "__rl" > 0
     ),
     j AS (
       SELECT p."__class",
         {columns}
       FROM p
     )
SELECT *
FROM j
WHERE j."__class" <> 'both' OR {any_reason}
ORDER BY {order_by}
