-- Complete the current WAL segment; its file name (the segment the receivers must now finish).
SELECT pg_walfile_name(pg_switch_wal());
