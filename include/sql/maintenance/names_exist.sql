-- Which of the named schemas, and of the named schema.table tables (ordinary, partitioned or
-- materialized: what VACUUM FULL can rewrite), exist in this database. Exact names, as quoted.
SELECT 'schema' AS kind, nspname AS name FROM pg_namespace WHERE nspname = ANY (%(schemas)s::text[])
UNION ALL
SELECT 'table', n.nspname || '.' || c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname || '.' || c.relname = ANY (%(tables)s::text[]);
