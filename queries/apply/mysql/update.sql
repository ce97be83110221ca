-- An update (or soft delete), only if the row still holds what the snapshot saw.
-- {assignments}: <column> = ? for each changed column; {guards}: " AND <column> <=> ?"
-- for each guard column. Parameters: the new values, the key, the expected values.
UPDATE {table} SET {assignments} WHERE {key_match}{guards}
