-- A source's ALTER ROLE ... IN DATABASE ... SET, on the restored database. {role},
-- {database} and {name} are psycopg.sql.Identifier, {value} psycopg.sql.Literal(s).
ALTER ROLE {role} IN DATABASE {database} SET {name} TO {value};
