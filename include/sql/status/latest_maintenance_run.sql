-- The most recently started dbops_pg_maintenance run: its id, first start and last finish
-- (NULL while any action is unfinished). Its rows: maintenance/journal_run.sql.
WITH latest AS (
    SELECT run_id
    FROM dbops.maintenance_report
    ORDER BY started_at DESC, id DESC
    LIMIT 1
)
SELECT r.run_id,
       min(r.started_at) AS started_at,
       CASE WHEN bool_and(r.finished_at IS NOT NULL) THEN max(r.finished_at) END AS finished_at
FROM dbops.maintenance_report r
JOIN latest USING (run_id)
GROUP BY r.run_id;
