-- Data quality: rows of one side whose key has a NULL part, one row per distinct key,
-- the key in its common types, in key order (the same on every plan).
SELECT {keys}, count(*) AS "__rows"
FROM {table} AS t
WHERE {key_is_null}
GROUP BY {groups}
ORDER BY {order}
