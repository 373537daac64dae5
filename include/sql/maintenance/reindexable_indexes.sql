-- Every valid index of the given schemas that REINDEX CONCURRENTLY can rebuild
-- (exclusion-constraint indexes cannot be). Parameters: %(schemas)s text[].
SELECT n.nspname AS schema_name,
       c.relname AS index_name,
       t.relname AS table_name,
       pg_relation_size(c.oid) AS index_bytes
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.indisvalid
  AND NOT i.indisexclusion
  AND c.relpersistence <> 't'
  AND t.relkind IN ('r', 'm')
  AND n.nspname = ANY (%(schemas)s::text[])
ORDER BY pg_relation_size(c.oid) DESC, n.nspname, c.relname;
