CREATE SCHEMA IF NOT EXISTS dbops;
CREATE TABLE IF NOT EXISTS dbops.schema_migrations (
    version      integer     PRIMARY KEY,
    description  text        NOT NULL,
    filename     text        NOT NULL,
    checksum     char(64)    NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now(),
    applied_by   text        NOT NULL DEFAULT current_user,
    execution_ms integer     NOT NULL
);
