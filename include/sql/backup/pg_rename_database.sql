-- Give a completely restored database its final name. Both are psycopg.sql.Identifier.
ALTER DATABASE {old} RENAME TO {new};
