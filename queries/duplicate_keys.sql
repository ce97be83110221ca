-- Data quality: complete keys that occur more than once on one side.
-- Soft-deleted rows count here: a key must be unique among all rows.
SELECT {keys}, count(*) AS "__rows"
FROM {table}
WHERE {key_is_complete}
GROUP BY {keys}
HAVING count(*) > 1
