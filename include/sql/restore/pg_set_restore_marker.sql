-- Mark a restored database with the backup it holds, so a rerun reports it instead of
-- restoring twice, and the nightly backup leaves it out. {database} is a
-- psycopg.sql.Identifier, {marker} a psycopg.sql.Literal.
ALTER DATABASE {database} SET dbops.restored_from = {marker};
