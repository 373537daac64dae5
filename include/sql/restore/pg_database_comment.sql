-- The source's database comment. {database} is a psycopg.sql.Identifier, {comment} a Literal.
COMMENT ON DATABASE {database} IS {comment};
