-- Append %(rows)s random 1536-dimension vectors, generated on the server.
-- The inner select refers to the outer row so that every row gets its own vector.
INSERT INTO bench_embeddings (embedding)
SELECT (SELECT array_agg(random()::real) FROM generate_series(1, 1536) WHERE g > 0)::vector(1536)
FROM generate_series(1, %(rows)s) AS g;
