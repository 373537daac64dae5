-- The point-in-time recovery rows' tables, made anew for each run: numbered commits (the id
-- is the writer's counter, so "acknowledged" is known exactly) and bulk rows (WAL volume).
DROP TABLE IF EXISTS bench_pitr_writes, bench_pitr_bulk;
CREATE TABLE bench_pitr_writes (
    id bigint PRIMARY KEY,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    note text NOT NULL
);
CREATE TABLE bench_pitr_bulk (
    id bigserial PRIMARY KEY,
    payload text NOT NULL
);
