-- One index by schema and name: its table, validity, size, and whether an exclusion
-- constraint uses it (REINDEX CONCURRENTLY refuses those).
SELECT t.relname AS table_name, i.indisvalid AS valid, pg_relation_size(c.oid) AS index_bytes,
       i.indisexclusion AS exclusion
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(name)s;
