-- Installed extensions and their versions.
SELECT extname::text AS name, extversion AS version FROM pg_extension ORDER BY 1;
