-- Client connections to this database (the rule PostgreSQLHighConnections counts
-- pg_stat_activity for datname ai_platform), by state, and the server's limit.
SELECT (SELECT count(*) FROM pg_stat_activity
        WHERE backend_type = 'client backend' AND datname = current_database()) AS database_connections,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS server_connections,
       current_setting('max_connections')::int AS max_connections,
       (SELECT coalesce(jsonb_object_agg(state, n), '{}'::jsonb)
        FROM (SELECT coalesce(state, 'unknown') AS state, count(*) AS n
              FROM pg_stat_activity
              WHERE backend_type = 'client backend' AND datname = current_database()
              GROUP BY 1) s) AS by_state;
