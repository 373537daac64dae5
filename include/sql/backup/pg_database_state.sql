-- Database-level state a dump made without --create leaves out (parameter: the name):
-- owner, encoding and locale, connection limit, comment, grants (NULL datacl: the
-- defaults), ALTER DATABASE ... SET and ALTER ROLE ... IN DATABASE ... SET.
-- Locale columns are read through to_jsonb so the query runs on 15, 16 (daticulocale)
-- and 17+ (datlocale).
SELECT pg_get_userbyid(d.datdba)::text AS owner,
       pg_encoding_to_char(d.encoding) AS encoding,
       d.datcollate AS collate,
       d.datctype AS ctype,
       d.datlocprovider::text AS locale_provider,
       coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale') AS icu_locale,
       to_jsonb(d) ->> 'daticurules' AS icu_rules,
       d.datconnlimit AS connection_limit,
       shobj_description(d.oid, 'pg_database') AS comment,
       CASE WHEN d.datacl IS NULL THEN NULL ELSE
           (SELECT coalesce(json_agg(json_build_object(
                       'grantee', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee)::text END,
                       'privilege', a.privilege_type,
                       'grantable', a.is_grantable)
                     ORDER BY a.grantee <> 0, pg_get_userbyid(a.grantee)::text, a.privilege_type), '[]'::json)
              FROM aclexplode(d.datacl) AS a)
       END AS grants,
       coalesce((SELECT s.setconfig FROM pg_db_role_setting AS s
                  WHERE s.setdatabase = d.oid AND s.setrole = 0), '{}'::text[]) AS settings,
       coalesce((SELECT json_object_agg(pg_get_userbyid(s.setrole)::text, s.setconfig)
                   FROM pg_db_role_setting AS s
                  WHERE s.setdatabase = d.oid AND s.setrole <> 0), '{}'::json) AS role_settings
  FROM pg_database AS d
 WHERE d.datname = %s;
