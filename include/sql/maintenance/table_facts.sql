-- One table by schema and name: heap+TOAST bytes, total bytes (with indexes), tuples.
SELECT pg_table_size(c.oid) AS table_bytes,
       pg_total_relation_size(c.oid) AS total_bytes,
       s.n_live_tup AS live_tuples,
       s.n_dead_tup AS dead_tuples
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE n.nspname = %(schema)s AND c.relname = %(name)s AND c.relkind IN ('r', 'm');
