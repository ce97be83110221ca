-- The key summary of one entity: one row per complete key found on either side, with
-- how many rows (and live rows) each side holds for it and, for live rows, the
-- fingerprint of the compared fields (normalised by their rules and hashed). Only keys
-- that need a look are kept: duplicated on a side, live on one side only, or live on
-- both with different fingerprints. A key whose fingerprints agree is equal on every
-- field and is never read again.
-- This is the exact summary, which spills to disk; queries/key_pairs.sql computes the
-- same by a join when no key on both sides is repeated and one side fits in memory.
-- __s/__r pack a side's row count (low 32 bits) and live row count (high 32 bits); the
-- fingerprints of the two sides cancel out in the XOR when they agree.
WITH u AS (
  SELECT {source_keys},
         CASE WHEN {source_live} THEN 4294967297 ELSE 1 END AS "__s",
         0 AS "__r",
         {source_live_fingerprint} AS "__h"
  FROM {source} AS t
  WHERE {source_key_is_complete}
  UNION ALL
  SELECT {replica_keys},
         0 AS "__s",
         CASE WHEN {replica_live} THEN 4294967297 ELSE 1 END AS "__r",
         {replica_live_fingerprint} AS "__h"
  FROM {replica} AS t
  WHERE {replica_key_is_complete}
),
g AS (
  SELECT {keys}, sum("__s") AS "__s", sum("__r") AS "__r", bit_xor("__h") AS "__h"
  FROM u
  GROUP BY {keys}
)
SELECT {keys},
       "__s" % 4294967296 AS "__source_rows",
       "__s" / 4294967296 AS "__source_live",
       "__r" % 4294967296 AS "__replica_rows",
       "__r" / 4294967296 AS "__replica_live",
       "__h" AS "__xor"
FROM g
WHERE "__s" % 4294967296 > 1
   OR "__r" % 4294967296 > 1
   OR "__s" / 4294967296 <> "__r" / 4294967296
   OR ("__s" / 4294967296 = 1 AND "__h" <> 0)
