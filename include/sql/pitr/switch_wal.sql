-- Complete the current WAL segment now (the receiver then seals it); returns where it ended.
SELECT pg_switch_wal()::text;
