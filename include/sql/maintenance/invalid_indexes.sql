-- Invalid indexes. A name ending in _ccnew[N] / _ccold[N] is a leftover of a failed
-- REINDEX CONCURRENTLY: safe to drop unless a build on its table is running right now
-- (pg_stat_progress_create_index). Other invalid indexes (a failed CREATE INDEX
-- CONCURRENTLY of an application) are only reported. Parameters: %(schemas)s text[].
SELECT n.nspname AS schema_name,
       c.relname AS index_name,
       t.relname AS table_name,
       pg_relation_size(c.oid) AS index_bytes,
       substring(c.relname FROM '^(.*)_cc(?:new|old)[0-9]*$') AS original_name,
       substring(c.relname FROM '_cc(new|old)[0-9]*$') AS leftover_of,
       EXISTS (SELECT 1 FROM pg_stat_progress_create_index p
               WHERE p.relid = i.indrelid OR p.index_relid = i.indexrelid) AS build_in_progress
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
  AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY (%(schemas)s::text[]))
ORDER BY n.nspname, c.relname;
