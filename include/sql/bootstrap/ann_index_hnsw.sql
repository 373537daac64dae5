-- Alternative ANN index: HNSW, cosine distance (no training data needed, more memory).
CREATE INDEX CONCURRENTLY IF NOT EXISTS {index}
    ON data_platform.text_embeddings USING hnsw (embedding vector_cosine_ops);
