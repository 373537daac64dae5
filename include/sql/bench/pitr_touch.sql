-- A little WAL (one committed row), so that the next pg_switch_wal() completes a new segment.
INSERT INTO bench_pitr_bulk (payload) VALUES ('switch');
