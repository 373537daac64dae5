-- What a (restored) server holds of the writer's numbered commits.
SELECT count(*) AS rows, coalesce(max(id), 0) AS max_id FROM bench_pitr_writes;
