-- Data quality: complete keys that occur more than once on one side, from the key
-- summary, in the common key types. Soft-deleted rows count here: a key must be unique
-- among all rows. In key order, the same on every plan.
SELECT {keys}, {rows} AS "__rows"
FROM {summary}
WHERE {rows} > 1
ORDER BY {order}
