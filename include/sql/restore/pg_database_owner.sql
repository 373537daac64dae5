-- Give a restored database the source's owner. Both are psycopg.sql.Identifier.
ALTER DATABASE {database} OWNER TO {owner};
