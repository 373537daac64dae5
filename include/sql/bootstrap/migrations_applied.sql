SELECT version, filename, checksum FROM dbops.schema_migrations ORDER BY version;
