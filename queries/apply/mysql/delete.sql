-- A delete, only if the row still holds what the snapshot saw. Parameters: the key,
-- the expected values.
DELETE FROM {table} WHERE {key_match}{guards}
