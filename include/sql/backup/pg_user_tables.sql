-- The user tables of the connected database: ordinary tables and leaf partitions
-- (not partitioned parents, views, foreign tables, nor tables owned by an extension),
-- outside pg_catalog / information_schema / toast / temp schemas. With the owner and
-- the primary-key columns in key order, each flagged when its type has a collation.
SELECT c.oid::bigint AS table_oid,
       n.nspname::text AS schema_name,
       c.relname::text AS table_name,
       pg_get_userbyid(c.relowner)::text AS owner,
       coalesce(
           (SELECT array_agg(a.attname::text ORDER BY k.ord)
              FROM pg_index AS i
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
              JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = c.oid AND i.indisprimary),
           '{}'::text[]) AS pk_columns,
       coalesce(
           (SELECT array_agg(a.attcollation <> 0 ORDER BY k.ord)
              FROM pg_index AS i
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
              JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = c.oid AND i.indisprimary),
           '{}'::boolean[]) AS pk_collatable
  FROM pg_class AS c
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
   AND NOT EXISTS (
           SELECT 1
             FROM pg_depend AS d
            WHERE d.classid = 'pg_class'::regclass
              AND d.objid = c.oid
              AND d.deptype = 'e')
 ORDER BY 1, 2;
