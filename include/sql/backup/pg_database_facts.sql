-- Facts about the connected database, for a backup's manifest.
SELECT current_database() AS database,
       current_setting('server_version') AS server_version,
       current_setting('server_version_num')::int AS server_version_num,
       pg_database_size(current_database()) AS size_bytes,
       pg_encoding_to_char(d.encoding) AS encoding,
       d.datcollate AS collate,
       d.datctype AS ctype
  FROM pg_database AS d
 WHERE d.datname = current_database();
