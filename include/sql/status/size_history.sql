-- Every capture of dbops.table_size_history of the last %(days)s days for the given tables
-- (the chart of table sizes over time), oldest first.
-- Parameters: %(days)s integer, %(tables)s text[] of 'schema.table'.
SELECT captured_at, schema_name, table_name, total_bytes
FROM dbops.table_size_history
WHERE captured_at > now() - make_interval(days => %(days)s)
  AND schema_name || '.' || table_name = ANY (%(tables)s::text[])
ORDER BY captured_at, schema_name, table_name;
