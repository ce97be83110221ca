-- An insert (the key was found absent): one ? per column.
INSERT INTO {table} ({columns}) VALUES ({placeholders})
