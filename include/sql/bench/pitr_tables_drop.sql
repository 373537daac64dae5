-- Remove the point-in-time recovery rows' tables (the other rows never see them).
DROP TABLE IF EXISTS bench_pitr_writes, bench_pitr_bulk;
