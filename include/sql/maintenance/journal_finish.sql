UPDATE dbops.maintenance_report
SET finished_at = clock_timestamp(),
    action = %(action)s,
    after_bytes = %(after_bytes)s,
    duration_ms = %(duration_ms)s,
    detail = detail || %(detail)s
WHERE id = %(id)s;
