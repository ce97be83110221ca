-- Dry run of insert.sql: 1 when the key is absent.
SELECT count(*)
FROM json_populate_record(NULL::{table}, $1::text::json) AS r
WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {key_match})
