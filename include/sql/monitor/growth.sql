-- Sizes and growth of every table of one capture, by window functions over
-- dbops.table_size_history.
-- For each window (1, 7, 30 days) the base of a capture is the newest earlier capture
-- at least (window - slack) older: slack is 10%% of the window, at most 6 hours, so a
-- capture that ran a little late or early still counts. Growth is bytes gained per day
-- actually elapsed between base and capture (NULL while the history is shorter).
-- days_to_limit: (limit - total) / the 7-day rate (else the 1-day, else the 30-day),
-- when the table grows; 0 when it is at or over its limit.
-- Parameters: %(captured_at)s timestamptz (the capture to report on), %(schemas)s text[],
--             %(default_limit)s bigint, %(limits)s jsonb {"schema.table": bytes}.
WITH h AS (
    SELECT captured_at, schema_name, table_name, total_bytes, heap_bytes, index_bytes, toast_bytes,
           live_tuples, dead_tuples
    FROM dbops.table_size_history
    WHERE captured_at <= %(captured_at)s::timestamptz
      AND captured_at > %(captured_at)s::timestamptz - interval '31 days'
      AND schema_name = ANY (%(schemas)s::text[])
),
w AS (
    SELECT h.*,
           last_value(captured_at) OVER d1  AS base_1d_at,  last_value(total_bytes) OVER d1  AS base_1d_bytes,
           last_value(captured_at) OVER d7  AS base_7d_at,  last_value(total_bytes) OVER d7  AS base_7d_bytes,
           last_value(captured_at) OVER d30 AS base_30d_at, last_value(total_bytes) OVER d30 AS base_30d_bytes,
           count(*) OVER (PARTITION BY schema_name, table_name) AS captures
    FROM h
    WINDOW d1  AS (PARTITION BY schema_name, table_name ORDER BY captured_at
                   RANGE BETWEEN UNBOUNDED PRECEDING AND interval '21 hours 36 minutes' PRECEDING),
           d7  AS (PARTITION BY schema_name, table_name ORDER BY captured_at
                   RANGE BETWEEN UNBOUNDED PRECEDING AND interval '6 days 18 hours' PRECEDING),
           d30 AS (PARTITION BY schema_name, table_name ORDER BY captured_at
                   RANGE BETWEEN UNBOUNDED PRECEDING AND interval '29 days 18 hours' PRECEDING)
),
g AS (
    SELECT w.*,
           (total_bytes - base_1d_bytes)
               / nullif(extract(epoch FROM captured_at - base_1d_at) / 86400, 0) AS growth_1d,
           (total_bytes - base_7d_bytes)
               / nullif(extract(epoch FROM captured_at - base_7d_at) / 86400, 0) AS growth_7d,
           (total_bytes - base_30d_bytes)
               / nullif(extract(epoch FROM captured_at - base_30d_at) / 86400, 0) AS growth_30d,
           coalesce((%(limits)s::jsonb ->> (schema_name || '.' || table_name))::bigint,
                    %(default_limit)s::bigint) AS limit_bytes
    FROM w
    WHERE captured_at = %(captured_at)s::timestamptz
)
SELECT schema_name, table_name, captured_at, total_bytes, heap_bytes, index_bytes, toast_bytes,
       live_tuples, dead_tuples, captures,
       round(growth_1d, 1) AS growth_1d, round(growth_7d, 1) AS growth_7d, round(growth_30d, 1) AS growth_30d,
       round(extract(epoch FROM captured_at - base_1d_at) / 86400, 3)  AS span_1d_days,
       round(extract(epoch FROM captured_at - base_7d_at) / 86400, 3)  AS span_7d_days,
       round(extract(epoch FROM captured_at - base_30d_at) / 86400, 3) AS span_30d_days,
       limit_bytes,
       CASE WHEN total_bytes >= limit_bytes THEN 0
            WHEN coalesce(growth_7d, growth_1d, growth_30d) > 0
                THEN round((limit_bytes - total_bytes) / coalesce(growth_7d, growth_1d, growth_30d), 1)
       END AS days_to_limit
FROM g
ORDER BY total_bytes DESC, schema_name, table_name;
