-- Every database of the server, with what decides whether the nightly backup takes it:
-- templates and databases that accept no connections cannot be dumped; a database
-- carrying dbops' restore marker (setting dbops.restored_from) is a restore target.
SELECT d.datname::text AS name,
       d.datistemplate AS is_template,
       d.datallowconn AS allow_connections,
       EXISTS (SELECT 1
                 FROM pg_db_role_setting AS s
                CROSS JOIN LATERAL unnest(s.setconfig) AS c(setting)
                WHERE s.setdatabase = d.oid AND s.setrole = 0
                  AND c.setting LIKE 'dbops.restored\_from=%') AS restore_target
  FROM pg_database AS d
 ORDER BY 1;
