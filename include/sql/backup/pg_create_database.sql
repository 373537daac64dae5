-- A new, empty database to restore into; template0 so nothing added to template1
-- collides with the dump. {database} is a psycopg.sql.Identifier.
CREATE DATABASE {database} TEMPLATE template0;
