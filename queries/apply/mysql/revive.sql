-- An insert whose key exists as a soft-deleted row brings that row back.
-- {assignments} sets every non-key column; {soft_deleted} is the job's test for a
-- soft-deleted row. Parameters: the new values, the key.
UPDATE {table} SET {assignments} WHERE {key_match} AND {soft_deleted}
