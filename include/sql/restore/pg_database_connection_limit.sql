-- The source's connection limit (set last: it must not stop the restore's own sessions).
-- {database} is a psycopg.sql.Identifier, {limit} a Literal integer.
ALTER DATABASE {database} CONNECTION LIMIT {limit};
