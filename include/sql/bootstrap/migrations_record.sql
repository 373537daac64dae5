INSERT INTO dbops.schema_migrations (version, description, filename, checksum, execution_ms)
VALUES (%s, %s, %s, %s, %s);
