-- A delete, only if the row still holds what the snapshot saw. $1 is the row, $2 the
-- expected row, both JSON objects.
DELETE FROM {table} AS t
USING json_populate_record(NULL::{table}, $1::text::json) AS r,
      json_populate_record(NULL::{table}, $2::text::json) AS e
WHERE {key_match}{guards}
