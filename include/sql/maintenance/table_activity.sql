-- Dead tuples, changes and last (auto)vacuum/analyze of every table, to decide what
-- needs VACUUM (ANALYZE) or ANALYZE. Parameters: %(schemas)s text[] (NULL: all user schemas).
SELECT s.schemaname AS schema_name,
       s.relname AS table_name,
       s.n_live_tup AS live_tuples,
       s.n_dead_tup AS dead_tuples,
       s.n_mod_since_analyze AS changes_since_analyze,
       s.n_ins_since_vacuum AS inserts_since_vacuum,
       greatest(s.last_vacuum, s.last_autovacuum) AS last_vacuum,
       greatest(s.last_analyze, s.last_autoanalyze) AS last_analyze,
       pg_table_size(s.relid) AS table_bytes
FROM pg_stat_user_tables s
JOIN pg_class c ON c.oid = s.relid
WHERE c.relkind IN ('r', 'm')
  AND c.relpersistence <> 't'
  AND (%(schemas)s::text[] IS NULL OR s.schemaname = ANY (%(schemas)s::text[]))
ORDER BY s.n_dead_tup DESC, s.schemaname, s.relname;
