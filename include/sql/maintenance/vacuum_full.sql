VACUUM (FULL true, ANALYZE true) {table}
