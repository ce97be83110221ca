-- The key summary of one entity by a join (the fast path of queries/keys.sql): each
-- side is reduced to its complete keys and, for live rows, the fingerprint of the
-- compared fields; the two sides are joined on the key, the source held in memory and
-- the replica streaming past it, and only the pairs that need a look are kept: a key
-- on one side only (live or not, so that a key repeated there shows), or on both with
-- a different liveness or fingerprint. A fingerprint is never NULL, so a row is live
-- exactly when it has one, and a side has the row exactly when its key (complete) is
-- not NULL in the pair. Each pair also carries the replica row's raw mapped columns
-- (v0, v1, …), so that the diff reads only the source snapshot again.
-- queries/key_pairs_summary.sql turns the pairs into the key summary.
-- A join pairs every row of a repeated key with every row of the other side, so this
-- is exact only when no key that is on both sides is repeated. recon checks that from
-- the join's output row count before it uses the result, and otherwise falls back to
-- queries/keys.sql.
WITH s AS (
  SELECT {source_keys},
         {source_live_fingerprint} AS "__h"
  FROM {source} AS t
  WHERE {source_key_is_complete}
),
r AS (
  SELECT {replica_keys},
         {replica_live_fingerprint} AS "__h",
         {replica_values}
  FROM {replica} AS t
  WHERE {replica_key_is_complete}
)
-- A pair needs a look when a side lacks the row, or when the fingerprints differ or
-- only one side has one (the liveness differs).
SELECT {paired_keys},
       CASE WHEN s."k0" IS NULL THEN 0 ELSE 1 END AS "__sr",
       CASE WHEN s."__h" IS NULL THEN 0 ELSE 1 END AS "__sl",
       CASE WHEN r."k0" IS NULL THEN 0 ELSE 1 END AS "__rr",
       CASE WHEN r."__h" IS NULL THEN 0 ELSE 1 END AS "__rl",
       CASE WHEN s."__h" IS NULL THEN r."__h"
            WHEN r."__h" IS NULL THEN s."__h"
            ELSE s."__h" ^ r."__h" END AS "__x",
       {carried_values}
FROM s FULL OUTER JOIN r ON {pairs_on}
WHERE s."k0" IS NULL OR r."k0" IS NULL OR s."__h" IS DISTINCT FROM r."__h"
