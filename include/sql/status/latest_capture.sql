-- The time of the newest capture of dbops.table_size_history (NULL: none yet).
SELECT max(captured_at) FROM dbops.table_size_history;
