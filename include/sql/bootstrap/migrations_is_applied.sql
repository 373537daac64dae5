SELECT 1 FROM dbops.schema_migrations WHERE version = %s;
