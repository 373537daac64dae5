-- WAL volume: %(rows)s rows of 256 random hex characters (about half compressible, like
-- typical text), generated on the server.
INSERT INTO bench_pitr_bulk (payload)
SELECT md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text)
    || md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(g::text)
FROM generate_series(1, %(rows)s) AS g;
