VACUUM (ANALYZE true, TRUNCATE {truncate}) {table}
