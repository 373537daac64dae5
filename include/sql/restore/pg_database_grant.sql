-- One database privilege of the source. {privilege} is CREATE, TEMPORARY or CONNECT,
-- {grantee} a psycopg.sql.Identifier or PUBLIC, {option} empty or WITH GRANT OPTION.
GRANT {privilege} ON DATABASE {database} TO {grantee}{option};
