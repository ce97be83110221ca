-- An update (or soft delete), only if the row still holds what the snapshot saw. $1 is
-- the new row, $2 the expected row, both JSON objects.
-- {assignments}: <column> = r.<column> for each changed column;
-- {guards}: " AND t.<column> IS NOT DISTINCT FROM e.<column>" for each guard column.
UPDATE {table} AS t
SET {assignments}
FROM json_populate_record(NULL::{table}, $1::text::json) AS r,
     json_populate_record(NULL::{table}, $2::text::json) AS e
WHERE {key_match}{guards}
