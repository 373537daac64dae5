-- Drop a database dbops created for a restore (a failed restore, or the old copy
-- replaced on explicit request). {database} is a psycopg.sql.Identifier.
DROP DATABASE IF EXISTS {database} WITH (FORCE);
