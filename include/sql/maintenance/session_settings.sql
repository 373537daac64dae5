-- Bounds for every statement of this session (autocommit: set_config(..., false) is
-- session-wide). A server that drops the client stops the running statement
-- (client_connection_check_interval) instead of vacuuming for nobody.
SELECT set_config('lock_timeout', %(lock_timeout)s, false),
       set_config('statement_timeout', %(statement_timeout)s, false),
       set_config('idle_in_transaction_session_timeout', '10min', false),
       set_config('client_connection_check_interval', '10s', false),
       set_config('application_name', %(application_name)s, false);
