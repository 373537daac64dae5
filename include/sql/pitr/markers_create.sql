-- The PITR drill's markers: a row written by each WAL check; a drill restores to a time
-- between two of them and proves exactly the rows up to that time exist.
CREATE SCHEMA IF NOT EXISTS dbops;
CREATE TABLE IF NOT EXISTS dbops.pitr_markers (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    written_by text
);
