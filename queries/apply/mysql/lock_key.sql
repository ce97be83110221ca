-- Before an insert: whether the key exists, locking the row when it does.
-- {key_match}: <key> = ? for each key column, joined by AND.
SELECT 1 FROM {table} WHERE {key_match} LIMIT 1 FOR UPDATE
