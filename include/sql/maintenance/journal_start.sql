INSERT INTO dbops.maintenance_report (run_id, started_at, kind, target, action, before_bytes, detail)
VALUES (%(run_id)s, clock_timestamp(), %(kind)s, %(target)s, %(action)s, %(before_bytes)s, %(detail)s)
RETURNING id;
