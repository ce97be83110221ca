-- The rows of one side that take part in the comparison: complete, unique, live keys,
-- projected to generated column names (k* keys, c* compared values in their common
-- type, n* newest-by columns, payload columns for corrections).
SELECT TRUE AS "__present", {projection}
FROM {table} AS t
WHERE {key_is_complete}
  AND {live}
  AND NOT EXISTS (
    SELECT 1 FROM ({duplicate_keys}) AS d WHERE {duplicate_match}
  )
