-- Dry run of update.sql and delete.sql: 1 when the row still holds what the snapshot saw.
SELECT count(*)
FROM {table} AS t,
     json_populate_record(NULL::{table}, $1::text::json) AS r,
     json_populate_record(NULL::{table}, $2::text::json) AS e
WHERE {key_match}{guards}
