-- Sessions connected to a database other than ours (parameter: the database name):
-- the ones an overwrite ends, named in its plan and its log.
SELECT pid, usename::text AS "user", application_name, client_addr::text AS client, state
  FROM pg_stat_activity
 WHERE datname = %s AND pid <> pg_backend_pid()
 ORDER BY pid;
