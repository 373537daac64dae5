-- Stop (or allow again) new sessions of a database while an overwrite sets it aside.
-- {database} is a psycopg.sql.Identifier, {allow} a psycopg.sql.Literal boolean.
ALTER DATABASE {database} ALLOW_CONNECTIONS {allow};
