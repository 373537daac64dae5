-- The DB Ops page only reads: every transaction of its session is read-only, and no
-- statement may hold up the page (or wait on a lock held by maintenance) for long.
-- Parameters: %(statement_timeout)s, %(lock_timeout)s, %(application_name)s.
SELECT set_config('default_transaction_read_only', 'on', false),
       set_config('statement_timeout', %(statement_timeout)s, false),
       set_config('lock_timeout', %(lock_timeout)s, false),
       set_config('application_name', %(application_name)s, false);
