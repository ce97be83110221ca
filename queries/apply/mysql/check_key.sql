-- Dry run of an insert: how many rows hold the key.
SELECT count(*) FROM {table} WHERE {key_match}
