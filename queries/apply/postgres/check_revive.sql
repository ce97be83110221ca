-- Dry run of revive.sql: 1 when the key exists as a soft-deleted row.
SELECT count(*)
FROM {table} AS t, json_populate_record(NULL::{table}, $1::text::json) AS r
WHERE {key_match} AND {soft_deleted}
