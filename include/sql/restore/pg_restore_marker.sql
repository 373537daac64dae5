-- Whether a database exists, and the backup dbops restored into it: dbops marks a
-- restored database with the setting dbops.restored_from = '<store>/<source>/<backup_id>'
-- (not its comment, which is restored from the backup). Parameter: the database name.
SELECT (SELECT substr(c.setting, length('dbops.restored_from=') + 1)
          FROM pg_db_role_setting AS s
         CROSS JOIN LATERAL unnest(s.setconfig) AS c(setting)
         WHERE s.setdatabase = d.oid AND s.setrole = 0
           AND c.setting LIKE 'dbops.restored\_from=%%') AS marker
  FROM pg_database AS d
 WHERE d.datname = %s;
