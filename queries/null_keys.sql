-- Data quality: rows of one side whose key has a NULL part, one row per distinct key.
SELECT {keys}, count(*) AS "__rows"
FROM {table}
WHERE {key_is_null}
GROUP BY {keys}
