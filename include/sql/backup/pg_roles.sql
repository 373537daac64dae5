-- The cluster's roles, without the predefined pg_* ones.
SELECT rolname::text AS name, rolsuper AS superuser, rolcanlogin AS can_login
  FROM pg_roles
 WHERE rolname !~ '^pg_'
 ORDER BY 1;
