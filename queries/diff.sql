-- The reconciliation of one entity: a full outer join of the two sides on the key,
-- keeping keys found on one side only and keys with at least one differing field.
-- A key duplicated on either side is data quality, reported elsewhere: it is left out
-- here on both sides (dk: such keys of both sides, in the common key types).
-- The generated columns of j: the coalesced keys; per compared field N, the comparator
-- recon_cmp_N(s.cN, r.cN) AS reasonN (NULL when equal) and both values; the payload
-- columns that corrections are built from.
WITH s AS ({source_side}),
     r AS ({replica_side}),
     dk AS ({duplicate_keys}),
     j AS (
       SELECT
         CASE WHEN r."__present" IS NULL THEN 'missing_in_replica'
              WHEN s."__present" IS NULL THEN 'extra_in_replica'
              ELSE 'both' END AS "__class",
         {columns}
       FROM s FULL OUTER JOIN r ON {join_on}
     )
SELECT *
FROM j
WHERE (j."__class" <> 'both' OR {any_reason})
  AND NOT EXISTS (SELECT 1 FROM dk WHERE {duplicate_match})
ORDER BY {order_by}
