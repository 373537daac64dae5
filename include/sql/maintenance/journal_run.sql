-- What one run did: the latest row per kind and target (a retried task appends rows).
SELECT DISTINCT ON (kind, target)
       kind, target, action, before_bytes, after_bytes, duration_ms, started_at, finished_at, detail
FROM dbops.maintenance_report
WHERE run_id = %(run_id)s
ORDER BY kind, target, id DESC;
