"""The Redis adapter: one series (the whole server), an RDB taken by BGSAVE + copy or by
``redis-cli --rdb`` (``redis.snapshot_method``), restores and drills through scratch
redis-servers (:mod:`dbops.stores.redis.recovery`).

No Airflow import: connections are reached through the ``links`` the task layer gives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dbops.backup.adapter import (
    DrillComparison,
    LogFn,
    RestorePlan,
    RestoreRefused,
    RestoreRequest,
    SingleSeriesAdapter,
)
from dbops.stores.redis import recovery
from dbops.stores.redis.backup import RedisBackup

if TYPE_CHECKING:
    from dbops.backup.repository import Backup


class RedisAdapter(SingleSeriesAdapter):
    store = "redis"

    # ------------------------------------------------------------------ backup

    def series_backup(self, subject: str | None) -> RedisBackup:
        self.check_series(subject)
        return RedisBackup(
            self.links.endpoint(self.config.connections.redis, "redis"),
            timeout=self.config.redis.snapshot_timeout_s,
            snapshot_method=self.config.redis.snapshot_method,
            scratch_dir=self.config.restore.scratch_dir,
        )

    # ------------------------------------------------------------------ restore

    def check_request(self, request: RestoreRequest) -> None:
        if request.store != self.store:
            raise RestoreRefused(f"a {request.store} request given to the redis adapter")
        recovery.check_request(request)

    def plan_restore(self, backup: Backup, request: RestoreRequest, log: LogFn) -> RestorePlan:
        return recovery.plan_restore(
            backup, request, links=self.links, live_conn_id=self.config.connections.redis, log=log
        )

    def restore(self, backup: Backup, plan: RestorePlan, log: LogFn) -> dict[str, Any]:
        # planned again: the target may have changed (or become the live one) since the plan task
        confirm = plan.target if plan.overwrite else ""
        request = RestoreRequest(store=self.store, backup_id=backup.backup_id, target=plan.target, confirm=confirm)
        fresh = self.plan_restore(backup, request, log)
        endpoint = self.links.endpoint(plan.target, "redis")
        return recovery.restore_redis(
            backup,
            endpoint,
            target=plan.target,
            live=bool(fresh.details["live"]),
            confirm=confirm,
            port=self.config.redis.scratch_port,
            scratch_dir=self.config.restore.scratch_dir,
            batch=self.config.restore.redis_migrate_batch,
            migrate_timeout_ms=self.config.restore.redis_migrate_timeout_ms,
            log=log,
        )

    def compare(self, expected: dict[str, Any], actual: dict[str, Any]) -> tuple[list[str], list[str]]:
        return recovery.compare_redis(expected, actual)

    # ------------------------------------------------------------------ drill

    def drill_target(self, backup: Backup) -> str:
        return "two scratch redis-servers on 127.0.0.1 (the RDB loaded into one, copied into the other with MIGRATE)"

    def drill(self, backup: Backup, found: DrillComparison, log: LogFn) -> None:
        recovery.drill_redis(
            port=self.config.redis.scratch_port,
            scratch_dir=self.config.restore.scratch_dir,
            batch=self.config.restore.redis_migrate_batch,
            migrate_timeout_ms=self.config.restore.redis_migrate_timeout_ms,
            log=log,
        )(backup, found)
