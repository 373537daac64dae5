-- How long the describing transaction waits for a table lock (parameter: a duration,
-- the same text as pg_dump's --lock-wait-timeout); local to the transaction.
SELECT set_config('lock_timeout', %s, true);
