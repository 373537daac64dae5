-- V005: tables of the dbops package itself (schema dbops, created in V001).
-- dbops.schema_migrations is created by the migration runner, not here.

-- One row per table per capture, written by dbops_table_size_monitor.
-- Sizes in bytes: total = heap + indexes + toast (pg_total_relation_size).
CREATE TABLE IF NOT EXISTS dbops.table_size_history (
    captured_at timestamptz NOT NULL,
    schema_name text        NOT NULL,
    table_name  text        NOT NULL,
    total_bytes bigint      NOT NULL,
    heap_bytes  bigint      NOT NULL,
    index_bytes bigint      NOT NULL,
    toast_bytes bigint      NOT NULL,
    -- From pg_stat_user_tables; NULL when statistics were not available.
    live_tuples bigint,
    dead_tuples bigint,
    CONSTRAINT table_size_history_pkey PRIMARY KEY (captured_at, schema_name, table_name),
    CONSTRAINT table_size_history_bytes_nonnegative
        CHECK (total_bytes >= 0 AND heap_bytes >= 0 AND index_bytes >= 0 AND toast_bytes >= 0),
    CONSTRAINT table_size_history_tuples_nonnegative
        CHECK ((live_tuples IS NULL OR live_tuples >= 0) AND (dead_tuples IS NULL OR dead_tuples >= 0))
);
-- Growth of one table over time (latest first).
CREATE INDEX IF NOT EXISTS idx_table_size_history_table_captured_at
    ON dbops.table_size_history (schema_name, table_name, captured_at DESC);
COMMENT ON TABLE dbops.table_size_history IS 'Table size snapshots taken by dbops_table_size_monitor';

-- One row per maintenance action (or report finding) of dbops_pg_maintenance.
-- A rerun of a task appends new rows; readers take the latest per run and target.
CREATE TABLE IF NOT EXISTS dbops.maintenance_report (
    id           bigserial   PRIMARY KEY,
    run_id       text        NOT NULL,           -- Airflow DAG run id
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz,                    -- NULL while running or if it never finished
    kind         text        NOT NULL,           -- e.g. vacuum, reindex, invalid_index, unused_index, bloat
    target       text        NOT NULL,           -- e.g. schema.table or schema.index
    action       text        NOT NULL,           -- what was done, or 'report' / 'skipped'
    before_bytes bigint,
    after_bytes  bigint,
    duration_ms  bigint,
    detail       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT maintenance_report_finished_after_started
        CHECK (finished_at IS NULL OR finished_at >= started_at),
    CONSTRAINT maintenance_report_numbers_nonnegative
        CHECK ((before_bytes IS NULL OR before_bytes >= 0)
           AND (after_bytes  IS NULL OR after_bytes  >= 0)
           AND (duration_ms  IS NULL OR duration_ms  >= 0)),
    CONSTRAINT maintenance_report_detail_object CHECK (jsonb_typeof(detail) = 'object')
);
CREATE INDEX IF NOT EXISTS idx_maintenance_report_run_id     ON dbops.maintenance_report (run_id);
CREATE INDEX IF NOT EXISTS idx_maintenance_report_started_at ON dbops.maintenance_report (started_at);
CREATE INDEX IF NOT EXISTS idx_maintenance_report_target_started_at
    ON dbops.maintenance_report (target, started_at DESC);
COMMENT ON TABLE dbops.maintenance_report IS 'Actions and findings of dbops_pg_maintenance runs';
