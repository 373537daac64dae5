-- Mark a restored database with the backup it holds, so a rerun reports it instead of
-- restoring twice. {database} is a psycopg.sql.Identifier, {comment} a psycopg.sql.Literal.
COMMENT ON DATABASE {database} IS {comment};
