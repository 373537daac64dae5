SELECT to_regclass('dbops.schema_migrations') IS NOT NULL;
