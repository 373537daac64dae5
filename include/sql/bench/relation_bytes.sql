-- Bytes of one table with its TOAST and indexes (0 when it does not exist).
SELECT coalesce(pg_total_relation_size(to_regclass(%(name)s)), 0) AS bytes;
