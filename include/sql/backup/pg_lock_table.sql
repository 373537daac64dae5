-- Hold a table of the snapshot until it is described (pg_dump releases its own locks
-- when it exits; a table dropped in between could not be counted any more).
-- {table} is a psycopg.sql.Identifier.
LOCK TABLE {table} IN ACCESS SHARE MODE;
