#!/usr/bin/env bash
# The wal-receiver container's command (docker-compose.yaml): the replication password, a
# Compose secret file holding only the password, becomes a private libpq passfile; then the
# receiver replaces this shell. The password never reaches a command line or the environment.
set -euo pipefail
secret_file="${DBOPS_REPLICATION_PASSWORD_FILE:?the path of the replication password file}"
password="$(<"$secret_file")"
if [[ -z "$password" ]]; then
    echo "wal-receiver: $secret_file is empty (set PLATFORM_REPLICATION_PASSWORD in .env)" >&2
    exit 1
fi
# libpq passfile fields escape ':' and '\'
escape() {
    local value="${1//\\/\\\\}"
    printf '%s' "${value//:/\\:}"
}
umask 077
passfile="$(mktemp -t dbops-pgpass.XXXXXX)"
printf '%s:%s:*:%s:%s\n' "$(escape "${PGHOST:?}")" "${PGPORT:-5432}" "$(escape "${PGUSER:?}")" "$(escape "$password")" > "$passfile"
unset password
export PGPASSFILE="$passfile"
exec python -m dbops.pitr.receiver "$@"
