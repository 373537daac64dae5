-- Whether a database exists, and its comment: dbops marks a database it restored with
-- "dbops-restore <store>/<source>/<backup_id>" (parameter: the database name).
SELECT shobj_description(oid, 'pg_database') AS comment
  FROM pg_database
 WHERE datname = %s;
