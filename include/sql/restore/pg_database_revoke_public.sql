-- The source had explicit database grants: start from none for PUBLIC (the owner keeps
-- its own), then grant exactly the source's. {database} is a psycopg.sql.Identifier.
REVOKE ALL ON DATABASE {database} FROM PUBLIC;
