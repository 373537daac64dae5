-- Whether a database of this name exists (parameter: the name).
SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %s) AS present;
