-- Indexes never scanned since statistics were last reset, that are neither unique nor
-- primary nor backing a constraint (dropping those would change behaviour, not just
-- speed), with the age of the statistics they are judged on. Scans on standbys are
-- counted on the standbys, not here. Parameters: %(schemas)s text[].
SELECT s.schemaname AS schema_name,
       s.indexrelname AS index_name,
       s.relname AS table_name,
       pg_relation_size(s.indexrelid) AS index_bytes,
       pg_get_indexdef(s.indexrelid) AS definition,
       d.stats_reset AS stats_reset,
       extract(epoch FROM now() - d.stats_reset)::bigint AS stats_age_s
FROM pg_stat_user_indexes s
JOIN pg_index i ON i.indexrelid = s.indexrelid
JOIN pg_stat_database d ON d.datname = current_database()
WHERE s.idx_scan = 0
  AND i.indisvalid
  AND NOT i.indisunique
  AND NOT i.indisprimary
  AND NOT i.indisexclusion
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = s.indexrelid)
  AND (%(schemas)s::text[] IS NULL OR s.schemaname = ANY (%(schemas)s::text[]))
ORDER BY pg_relation_size(s.indexrelid) DESC, s.schemaname, s.indexrelname;
