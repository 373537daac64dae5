-- Which of the named databases exist and accept connections.
SELECT datname FROM pg_database WHERE datname = ANY (%(names)s::text[]) AND datallowconn AND NOT datistemplate;
