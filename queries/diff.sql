-- The reconciliation of one entity, over its key summary (queries/keys.sql). The keys
-- to look at are those live on one side only, or live on both with different
-- fingerprints; a key duplicated on either side is data quality, reported from the
-- summary and left out here. For those few keys each side's row is joined in (sp, rp:
-- raw columns, live rows only) and every compared field goes through its comparator
-- recon_cmp_N, which returns NULL when the two values are equal under the field's rule.
-- Keys whose fingerprints differ only within a tolerance are equal field by field and
-- drop out at the end.
-- The generated columns of j: the keys; per compared field N, reasonN and both values
-- in the common type; newest-by flags; per mapped column the correction payload.
WITH d AS (
       SELECT {keys},
              CASE WHEN "__replica_live" = 0 THEN 'missing_in_replica'
                   WHEN "__source_live" = 0 THEN 'extra_in_replica'
                   ELSE 'both' END AS "__class"
       FROM {summary}
       WHERE "__source_rows" <= 1 AND "__replica_rows" <= 1
         AND "__source_live" + "__replica_live" > 0
     ),
     sp AS ({source_payload}),
     rp AS ({replica_payload}),
     -- Each side is joined to the few keys on its own, so the small key list is the
     -- side of the join held in memory and the snapshot streams past it.
     sj AS (
       SELECT d.*, {source_values}
       FROM d LEFT JOIN sp ON {source_payload_on}
     ),
     rj AS (
       SELECT {d_keys}, {replica_values}
       FROM d LEFT JOIN rp ON {replica_payload_on}
     ),
     j AS (
       SELECT sj."__class",
         {columns}
       FROM sj JOIN rj ON {sides_on}
     )
SELECT *
FROM j
WHERE j."__class" <> 'both' OR {any_reason}
ORDER BY {order_by}
