-- One table: a sha256 over the text of the first {limit} rows in a fixed order
-- ({order}: the primary key, else the whole row's text, with collatable values compared
-- in the "C" collation so that the database's own collation cannot change the order).
-- {table} and {order} are composed with psycopg.sql.Identifier by the caller; {limit}
-- is a Literal.
SELECT count(s.r) AS sampled,
       encode(sha256(convert_to(coalesce(string_agg(s.r, E'\n' ORDER BY s.n), ''), 'UTF8')), 'hex') AS sample_sha256
  FROM (SELECT ROW(t.*)::text AS r,
               row_number() OVER (ORDER BY {order}) AS n
          FROM {table} AS t
         ORDER BY {order}
         LIMIT {limit}) AS s;
