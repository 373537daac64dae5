-- One snapshot of every table and materialized view of the given schemas, appended to
-- dbops.table_size_history, all rows with the same captured_at.
-- heap  = main, free-space-map and visibility-map forks (pg_table_size without TOAST)
-- toast = the TOAST table and its index;  index = pg_indexes_size
-- total = heap + index + toast (what pg_total_relation_size returns), from one measurement.
-- A table dropped while this runs gets NULL sizes and is left out.
-- Parameters: %(captured_at)s timestamptz (NULL: now()), %(schemas)s text[].
WITH rel AS (
    SELECT c.oid, n.nspname, c.relname,
           pg_table_size(c.oid) AS table_bytes,
           pg_indexes_size(c.oid) AS index_bytes,
           CASE WHEN c.reltoastrelid = 0 THEN 0 ELSE pg_total_relation_size(c.reltoastrelid) END AS toast_bytes
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'm')
      AND c.relpersistence <> 't'
      AND n.nspname = ANY (%(schemas)s::text[])
)
INSERT INTO dbops.table_size_history
    (captured_at, schema_name, table_name, total_bytes, heap_bytes, index_bytes, toast_bytes, live_tuples, dead_tuples)
SELECT coalesce(%(captured_at)s::timestamptz, now()),
       r.nspname,
       r.relname,
       greatest(r.table_bytes - r.toast_bytes, 0) + r.index_bytes + r.toast_bytes,
       greatest(r.table_bytes - r.toast_bytes, 0),
       r.index_bytes,
       r.toast_bytes,
       s.n_live_tup,
       s.n_dead_tup
FROM rel r
LEFT JOIN pg_stat_user_tables s ON s.relid = r.oid
WHERE r.table_bytes IS NOT NULL AND r.index_bytes IS NOT NULL AND r.toast_bytes IS NOT NULL
RETURNING captured_at;
