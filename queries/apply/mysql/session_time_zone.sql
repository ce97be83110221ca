-- Values are bound in UTC.
SET SESSION time_zone = '+00:00'
