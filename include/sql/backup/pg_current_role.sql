-- The connected role and whether it is a superuser (pg_dumpall needs one to read
-- role passwords).
SELECT current_user::text AS role_name, r.rolsuper AS superuser
  FROM pg_roles AS r
 WHERE r.rolname = current_user;
