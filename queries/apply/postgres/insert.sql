-- An insert, only if the key is absent. $1 is the new row as a JSON object, turned into
-- the table's own column types by json_populate_record.
-- {columns}: the quoted columns; {row_columns}: the same as r.<column>;
-- {key_match}: t.<key> = r.<key> for each key column, joined by AND.
INSERT INTO {table} ({columns})
SELECT {row_columns}
FROM json_populate_record(NULL::{table}, $1::text::json) AS r
WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {key_match})
