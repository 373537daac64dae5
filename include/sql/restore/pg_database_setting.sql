-- A source's ALTER DATABASE ... SET, on the restored database. {database} and {name}
-- are psycopg.sql.Identifier, {value} one or more psycopg.sql.Literal (list settings such
-- as search_path are given element by element, as pg_dump does).
ALTER DATABASE {database} SET {name} TO {value};
