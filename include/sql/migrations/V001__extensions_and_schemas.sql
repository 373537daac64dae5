-- V001: extensions and schemas of the AI platform database (ai_platform).
--
-- Applied by the dbops migration runner inside one transaction; the runner
-- (not this file) creates dbops.schema_migrations and records this version.

-- pgvector: data_platform.text_embeddings.embedding is vector(1536).
-- pgvector is not a "trusted" extension: the runner's role must be allowed to
-- create it, or a DBA creates it beforehand (then this is a no-op).
CREATE EXTENSION IF NOT EXISTS vector;

-- uuid-ossp is part of contrib, which some servers do not ship. The seed's init
-- script enables it, so enable it where it exists; nothing in these migrations
-- depends on it (UUID defaults, if any, use the built-in gen_random_uuid()).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'uuid-ossp') THEN
        CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
    END IF;
END
$$;

-- One schema per platform domain (the seed's design), plus dbops' own schema.
-- IF NOT EXISTS: the runner may already have created "dbops" for its
-- schema_migrations table before this file runs.
CREATE SCHEMA IF NOT EXISTS auth;
CREATE SCHEMA IF NOT EXISTS data_platform;
CREATE SCHEMA IF NOT EXISTS algo_platform;
CREATE SCHEMA IF NOT EXISTS model_platform;
CREATE SCHEMA IF NOT EXISTS service_platform;
CREATE SCHEMA IF NOT EXISTS dbops;

COMMENT ON SCHEMA auth             IS 'Users, groups, permissions (Django-style auth)';
COMMENT ON SCHEMA data_platform    IS 'Data sources, datasets, data items, text embeddings';
COMMENT ON SCHEMA algo_platform    IS 'Algorithm registry';
COMMENT ON SCHEMA model_platform   IS 'Models and model versions';
COMMENT ON SCHEMA service_platform IS 'Deployed model services';
COMMENT ON SCHEMA dbops            IS 'Bookkeeping of the dbops Airflow package (migrations, size history, maintenance reports)';
