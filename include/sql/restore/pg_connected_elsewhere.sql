-- Sessions connected to a database other than ours (parameter: the database name).
SELECT count(*) AS sessions
  FROM pg_stat_activity
 WHERE datname = %s AND pid <> pg_backend_pid();
