-- End one session of the database an overwrite sets aside (parameter: its pid).
SELECT pg_terminate_backend(%s) AS ended;
