-- The reconciliation of one entity. First a narrow full outer join of the two sides on
-- the key (keys, compared values, newest-by columns only), keeping keys found on one
-- side only and keys with at least one differing field. A key duplicated on either side
-- is data quality, reported elsewhere: it is left out here on both sides (dk: such keys
-- of both sides, in the common key types). Then, for the few keys that remain, the
-- payload columns corrections are built from are joined in from each side.
-- The generated columns of j: the coalesced keys; per compared field N, the comparator
-- recon_cmp_N(s.cN, r.cN) AS reasonN (NULL when equal) and both values.
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
     ),
     d AS (
       SELECT *
       FROM j
       WHERE (j."__class" <> 'both' OR {any_reason})
         AND NOT EXISTS (SELECT 1 FROM dk WHERE {duplicate_match})
     ),
     sp AS ({source_payload}),
     rp AS ({replica_payload})
SELECT d.*, {payload}
FROM d
LEFT JOIN sp ON {source_payload_on}
LEFT JOIN rp ON {replica_payload_on}
ORDER BY {order_by}
