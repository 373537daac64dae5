-- Planner statistics for a freshly restored database (pg_restore does not collect them).
ANALYZE;
