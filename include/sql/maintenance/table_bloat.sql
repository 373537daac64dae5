-- Estimated bloat of tables (heap), from catalog statistics only (no pgstattuple).
-- The method of ioguix/pgsql-bloat-estimation (table_bloat.sql; (c) 2015 Jehan-Guillaume
-- (ioguix) de Rorthais, BSD-2-Clause), restated:
-- a row costs its 4-byte line pointer + the aligned 23-byte header (+ null bitmap)
-- + the aligned sum of average column widths from pg_stats; expected pages =
-- reltuples / ((block size - page header) * fillfactor / row bytes); bloat = actual - expected.
-- TOAST is left out (its chunks are fixed-size and its bloat shows as dead toast tuples).
-- NULL estimates (stats_missing = true) where a column has no statistics or reltuples is -1.
-- Parameters: %(schemas)s text[] (NULL: every non-system schema).
WITH rel AS (
    SELECT c.oid, n.nspname, c.relname, c.reltuples, c.relpages,
           coalesce(substring(array_to_string(c.reloptions, ' ') FROM 'fillfactor=([0-9]+)')::int, 100) AS fillfactor
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'm')
      AND c.relpersistence <> 't'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
      AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY (%(schemas)s::text[]))
),
widths AS (
    SELECT r.oid, r.nspname, r.relname, r.reltuples, r.relpages, r.fillfactor,
           count(s.attname) < count(a.attnum) AS stats_missing,
           23 + CASE WHEN max(coalesce(s.null_frac, 0)) > 0 THEN (7 + count(a.attnum)) / 8 ELSE 0 END AS header,
           coalesce(sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 0)), 0) AS data_width
    FROM rel r
    JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_stats s
           ON s.schemaname = r.nspname AND s.tablename = r.relname AND s.attname = a.attname
          AND NOT s.inherited
    GROUP BY 1, 2, 3, 4, 5, 6
),
estimate AS (
    SELECT w.*, current_setting('block_size')::numeric AS bs,
           CASE WHEN w.stats_missing OR w.reltuples < 0 THEN NULL
                ELSE ceil(w.reltuples / floor((current_setting('block_size')::numeric - 24) * w.fillfactor
                          / (100 * (4 + 8 * ceil(w.header / 8.0) + 8 * ceil(w.data_width / 8.0)))))
           END AS expected_pages
    FROM widths w
)
SELECT nspname AS schema_name,
       relname AS table_name,
       (relpages * bs)::bigint AS heap_bytes,
       CASE WHEN expected_pages IS NULL THEN NULL
            ELSE (greatest(relpages - expected_pages, 0) * bs)::bigint END AS bloat_bytes,
       CASE WHEN expected_pages IS NULL OR relpages = 0 THEN NULL
            ELSE round(greatest(relpages - expected_pages, 0)::numeric / relpages, 4) END AS bloat_ratio,
       stats_missing OR reltuples < 0 AS stats_missing
FROM estimate
ORDER BY bloat_bytes DESC NULLS LAST, schema_name, table_name;
