-- The columns of a table ($1: its quoted name), none when it does not exist.
SELECT attname::text
FROM pg_attribute
WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
