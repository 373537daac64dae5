-- Bounds for the monitor's statements (size functions take ACCESS SHARE locks: a table
-- being rewritten by VACUUM FULL must not hang the capture).
SELECT set_config('lock_timeout', %(lock_timeout)s, false),
       set_config('statement_timeout', %(statement_timeout)s, false),
       set_config('application_name', %(application_name)s, false);
