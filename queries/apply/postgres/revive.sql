-- An insert whose key exists as a soft-deleted row brings that row back. $1 is the new
-- row; {assignments} sets every non-key column; {soft_deleted} is the job's test for a
-- soft-deleted row.
UPDATE {table} AS t
SET {assignments}
FROM json_populate_record(NULL::{table}, $1::text::json) AS r
WHERE {key_match} AND {soft_deleted}
