-- true while a restored server is still replaying (not yet promoted).
SELECT pg_is_in_recovery();
