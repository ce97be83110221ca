-- One side's live rows as the diff joins them in for the keys it looks at: the key in
-- the common types and the raw mapped columns (cast after the join, for the few rows
-- that remain).
SELECT {projection}
FROM {table} AS t
WHERE {key_is_complete}
  AND {live}
