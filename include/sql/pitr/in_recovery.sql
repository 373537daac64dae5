-- Whether the server is still replaying WAL (false once promoted).
SELECT pg_is_in_recovery();
