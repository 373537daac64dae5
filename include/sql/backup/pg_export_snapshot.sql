-- Export this REPEATABLE READ transaction's snapshot, so pg_dump (--snapshot) dumps
-- exactly what this transaction then describes. Must be the transaction's first query.
SELECT pg_export_snapshot() AS snapshot;
