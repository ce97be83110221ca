-- Dry run of revive.sql: how many rows hold the key soft-deleted.
SELECT count(*) FROM {table} WHERE {key_match} AND {soft_deleted}
