-- The server's WAL write position in bytes, and its clock.
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS wal_bytes, clock_timestamp() AS now;
