-- The vector ANN index of the platform design: IVFFlat, cosine distance, {lists} lists.
-- Built CONCURRENTLY so a rerun on a live database never blocks writers.
CREATE INDEX CONCURRENTLY IF NOT EXISTS {index}
    ON data_platform.text_embeddings USING ivfflat (embedding vector_cosine_ops)
    WITH (lists = {lists});
