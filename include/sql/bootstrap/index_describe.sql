-- access method, validity and definition of one index, by schema and name
SELECT am.amname, ix.indisvalid, pg_get_indexdef(ix.indexrelid)
FROM pg_index ix
JOIN pg_class c ON c.oid = ix.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_am am ON am.oid = c.relam
WHERE n.nspname = %s AND c.relname = %s;
