-- Which of the given roles exist in this cluster (parameter: a text[] of names).
SELECT rolname::text AS name FROM pg_roles WHERE rolname = ANY(%s);
