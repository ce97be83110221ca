-- Dry run of update.sql and delete.sql: 1 when the row still holds what the snapshot saw.
SELECT count(*) FROM {table} WHERE {key_match}{guards}
