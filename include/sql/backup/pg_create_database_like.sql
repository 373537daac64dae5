-- A new, empty database to restore into, from template0 (nothing added to template1
-- collides with the dump), with the source's encoding and locale ({options}: ENCODING,
-- LOCALE_PROVIDER, LC_COLLATE, LC_CTYPE, ICU_LOCALE, ICU_RULES as literals).
-- {database} is a psycopg.sql.Identifier.
CREATE DATABASE {database} TEMPLATE template0 {options};
