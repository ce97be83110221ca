-- One side's rows as corrections need them, read only for the keys that differ: the key
-- in the common types, the current values, and the values in the other side's types.
SELECT {projection}
FROM {table} AS t
WHERE {key_is_complete}
  AND {live}
