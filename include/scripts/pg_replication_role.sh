#!/usr/bin/env bash
# Runs once, when the platform's PostgreSQL initialises an empty data directory (mounted into
# /docker-entrypoint-initdb.d by docker-compose.yaml): the role dbops streams WAL and takes
# base backups as, and the pg_hba.conf entry that lets it connect for replication from the
# other containers. An existing cluster needs the same two steps by hand; the WAL receiver
# names what is missing.
set -euo pipefail
secret_file="${DBOPS_REPLICATION_PASSWORD_FILE:?the path of the replication password file}"
if [[ ! -s "$secret_file" ]]; then
    echo "pg_replication_role: $secret_file is empty (set PLATFORM_REPLICATION_PASSWORD in .env)" >&2
    exit 1
fi
# psql reads the password from the file itself (\set with backquotes): never on a command line
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\set password `cat "$DBOPS_REPLICATION_PASSWORD_FILE"`
SELECT format('CREATE ROLE dbops_replication LOGIN REPLICATION PASSWORD %L', :'password') \gexec
\unset password
SQL
echo "host replication dbops_replication all scram-sha-256" >> "$PGDATA/pg_hba.conf"
