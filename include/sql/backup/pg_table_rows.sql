-- One table's exact row count, its own rows only: ONLY, because pg_dump's COPY of an
-- inheritance parent holds the parent's rows alone (each child is a table of its own).
-- {table} is composed with psycopg.sql.Identifier by the caller.
SELECT count(*) FROM ONLY {table};
