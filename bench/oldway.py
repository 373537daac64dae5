"""The old cron scripts' commands, reproduced with the local connection settings.

Faithful to the platform's scripts (database_backup.sh, pg_maintenance.sh,
backup-sync.sh): the same tools, flags and order. Two deliberate differences, neither
of which changes what is measured: secrets go through the environment (PGPASSWORD,
REDISCLI_AUTH) or a 0600 file instead of argv, and every pipeline runs under
``set -o pipefail`` so that a failed dump fails the benchmark instead of timing a
truncated one.
"""

from __future__ import annotations

import shlex
from pathlib import Path

# database_backup.sh: PGPASSWORD=... pg_dumpall -h localhost -U postgres | gzip > postgres_$DATE.sql.gz
PG_BACKUP = "pg_dumpall | gzip > {out}"
# restoring it (the scripts have no restore; the documented way): gunzip and feed psql
PG_RESTORE = "gunzip -c {dump} | psql -q -d postgres > /dev/null"
# pg_maintenance.sh (psql -U postgres -d ai_platform << EOF_SQL ... EOF_SQL)
PG_MAINTENANCE_SQL = """\
-- 更新统计信息
ANALYZE VERBOSE;
-- 索引维护
REINDEX DATABASE {database};
-- 回收空间
VACUUM FULL VERBOSE;
-- 清理未使用的索引
SELECT
  indexrelid::regclass as index_name,
  relid::regclass as table_name,
  'DROP INDEX ' || indexrelid::regclass || ';' as drop_statement
FROM pg_stat_user_indexes
WHERE idx_scan = 0 AND idx_tup_read = 0 AND idx_tup_fetch = 0;
"""
PG_MAINTENANCE = "psql -d {database} < {sql_file} > /dev/null 2>&1"
# database_backup.sh: redis-cli -a ... SAVE; cp /var/lib/redis/dump.rdb $BACKUP_ROOT/redis/redis_$DATE.rdb
# (SAVE's reply to stderr: an error reply is on stdout, and exits 1, so a failure is seen there)
REDIS_BACKUP = "redis-cli -h 127.0.0.1 -p {port} --no-auth-warning SAVE >&2 && cp {rdb} {out}"
# database_backup.sh: mongodump --uri=... --out=$BACKUP_ROOT/mongodb/mongodb_$DATE
# (not --quiet, which the script has not either: it silences mongodump's "Failed: ..." line too)
MONGO_BACKUP = "mongodump --config={config} --out={out}"
# backup-sync.sh: rsync -avz --delete $BACKUP_DIR $REMOTE_SERVER:$REMOTE_DIR/
RSYNC = "rsync -avz --delete --stats -e {rsh} {folder} {remote}"
# database_backup.sh: find ... -mtime +30 -delete (per store)
RETENTION = "find {root} -name '{pattern}' -type f -mtime +30 -delete"


def bash(script: str) -> list[str]:
    return ["bash", "-c", "set -o pipefail; " + script]


def q(value: str | Path) -> str:
    return shlex.quote(str(value))
