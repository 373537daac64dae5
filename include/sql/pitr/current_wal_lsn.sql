-- Where the server has written WAL up to (after a commit: past its commit record).
SELECT pg_current_wal_lsn()::text;
