-- Benchmark dataset: embeddings like the platform's text_embeddings (vector(1536)).
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE IF NOT EXISTS bench_embeddings (
    id bigserial PRIMARY KEY,
    embedding vector(1536) NOT NULL
);
