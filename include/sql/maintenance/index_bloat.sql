-- Estimated bloat of btree indexes, from catalog statistics only (no pgstattuple).
-- The method of ioguix/pgsql-bloat-estimation (btree_bloat.sql; (c) 2015 Jehan-Guillaume
-- (ioguix) de Rorthais, BSD-2-Clause), restated:
-- expected leaf pages = reltuples / (usable bytes per page * fillfactor / bytes per entry),
-- an entry being the 4-byte line pointer + the aligned IndexTuple header (+ null bitmap)
-- + the aligned average key width from pg_stats; bloat = actual pages - expected pages.
-- Needs statistics: an index whose columns have no pg_stats rows (never analyzed) or
-- whose table reltuples is unknown (-1) gets NULL estimates (stats_missing = true).
-- Parameters: %(schemas)s text[] (NULL: every non-system schema).
WITH idx AS (
    SELECT i.indexrelid, i.indrelid, n.nspname, ci.relname AS index_name, ct.relname AS table_name,
           ci.reltuples, ci.relpages, i.indnatts, i.indisvalid,
           coalesce(substring(array_to_string(ci.reloptions, ' ') FROM 'fillfactor=([0-9]+)')::int, 90) AS fillfactor,
           string_to_array(textin(int2vectorout(i.indkey)), ' ')::int[] AS indkey
    FROM pg_index i
    JOIN pg_class ci ON ci.oid = i.indexrelid
    JOIN pg_class ct ON ct.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = ci.relnamespace
    JOIN pg_am am ON am.oid = ci.relam
    WHERE am.amname = 'btree'
      AND ci.relpersistence <> 't'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
      AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY (%(schemas)s::text[]))
),
cols AS (
    -- one row per index column: a table column, or (expression) the index's own attribute
    SELECT idx.*, pos,
           CASE WHEN idx.indkey[pos] <> 0 THEN idx.table_name ELSE idx.index_name END AS stats_relname,
           coalesce(ta.attname, ia.attname) AS attname
    FROM idx
    CROSS JOIN LATERAL generate_series(1, idx.indnatts) AS pos
    LEFT JOIN pg_attribute ta ON idx.indkey[pos] <> 0 AND ta.attrelid = idx.indrelid AND ta.attnum = idx.indkey[pos]
    LEFT JOIN pg_attribute ia ON idx.indkey[pos] = 0 AND ia.attrelid = idx.indexrelid AND ia.attnum = pos
),
widths AS (
    SELECT c.indexrelid, c.indrelid, c.nspname, c.index_name, c.table_name, c.reltuples, c.relpages,
           c.fillfactor, c.indisvalid,
           count(s.attname) < count(*) AS stats_missing,
           -- IndexTupleData (8 bytes), plus a null bitmap when any key column has nulls
           CASE WHEN max(coalesce(s.null_frac, 0)) = 0 THEN 8 ELSE 8 + 4 END AS tuple_header,
           sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 1024)) AS data_width
    FROM cols c
    LEFT JOIN pg_stats s
           ON s.schemaname = c.nspname AND s.tablename = c.stats_relname AND s.attname = c.attname
          AND NOT s.inherited
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
),
entry AS (
    -- MAXALIGN is 8 on every 64-bit platform PostgreSQL 16 supports
    SELECT w.*, current_setting('block_size')::numeric AS bs,
           4 + 8 * ceil(w.tuple_header / 8.0) + 8 * ceil(w.data_width / 8.0) AS entry_bytes
    FROM widths w
),
estimate AS (
    SELECT e.*,
           CASE WHEN e.stats_missing OR e.reltuples < 0 THEN NULL
                ELSE 1 + ceil(e.reltuples / floor((e.bs - 24 - 16) * e.fillfactor / (100 * e.entry_bytes)))
           END AS expected_pages
    FROM entry e
)
SELECT nspname AS schema_name,
       index_name,
       table_name,
       indisvalid AS valid,
       (relpages * bs)::bigint AS index_bytes,
       CASE WHEN expected_pages IS NULL THEN NULL
            ELSE (greatest(relpages - expected_pages, 0) * bs)::bigint END AS bloat_bytes,
       CASE WHEN expected_pages IS NULL OR relpages = 0 THEN NULL
            ELSE round(greatest(relpages - expected_pages, 0)::numeric / relpages, 4) END AS bloat_ratio,
       stats_missing OR reltuples < 0 AS stats_missing
FROM estimate
ORDER BY bloat_bytes DESC NULLS LAST, schema_name, index_name;
