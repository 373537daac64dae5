"""The MongoDB adapter: one series (the instance), ``mongodump --archive --gzip`` (``--oplog``
on a replica-set member), restores beside the target and swapped in, drills into scratch
databases (:mod:`dbops.stores.mongo.recovery`).

No Airflow import: connections are reached through the ``links`` the task layer gives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dbops.backup.adapter import (
    DrillComparison,
    Endpoint,
    LogFn,
    RestorePlan,
    RestoreRefused,
    RestoreRequest,
    SingleSeriesAdapter,
)
from dbops.backup.restore import default_target, drill_name
from dbops.stores.mongo import recovery
from dbops.stores.mongo.backup import MongoBackup

if TYPE_CHECKING:
    from dbops.backup.repository import Backup


class MongoAdapter(SingleSeriesAdapter):
    store = "mongo"

    def _endpoint(self) -> Endpoint:
        return self.links.endpoint(self.config.connections.mongo, "mongo")

    # ------------------------------------------------------------------ backup

    def series_backup(self, subject: str | None) -> MongoBackup:
        self.check_series(subject)
        return MongoBackup(self._endpoint(), self.config.mongo.database or None)

    # ------------------------------------------------------------------ restore

    def check_request(self, request: RestoreRequest) -> None:
        if request.store != self.store:
            raise RestoreRefused(f"a {request.store} request given to the mongo adapter")
        recovery.check_request(request)

    def plan_restore(self, backup: Backup, request: RestoreRequest, log: LogFn) -> RestorePlan:
        database = recovery.mongo_source_database(backup, request.database, default=self.config.mongo.database)
        target = request.target or default_target(database, backup.backup_id)
        plan = recovery.plan_mongo(self._endpoint(), backup, database=database, target=target, confirm=request.confirm)
        for action in plan.actions:
            log(f"plan: {action}")
        return plan

    def restore(self, backup: Backup, plan: RestorePlan, log: LogFn) -> dict[str, Any]:
        return recovery.restore_mongo(self._endpoint(), backup, plan, log)

    def compare(self, expected: dict[str, Any], actual: dict[str, Any]) -> tuple[list[str], list[str]]:
        return recovery.compare_mongo(expected, actual)

    # ------------------------------------------------------------------ drill

    def _drill_databases(self, backup: Backup) -> list[str]:
        """The configured database when the backup holds it, else every database it holds."""
        held = list((backup.manifest.get("details") or {}).get("databases") or [])
        wanted = self.config.mongo.database
        return [wanted] if wanted and wanted in held else held

    def _drill_connection(self) -> tuple[str, bool]:
        drill_conn = self.config.connections.drill_mongo
        if drill_conn and self.links.connection_exists(drill_conn):
            return drill_conn, True
        return self.config.connections.mongo, False

    def drill_target(self, backup: Backup) -> str | list[str]:
        conn_id, separate = self._drill_connection()
        names = [drill_name(db, backup.backup_id) for db in self._drill_databases(backup)]
        return [f"{name} (connection {conn_id})" for name in names] if separate else names

    def drill(self, backup: Backup, found: DrillComparison, log: LogFn) -> None:
        conn_id, separate = self._drill_connection()
        if separate:
            where = f"drill server of connection {conn_id}"
        else:
            where = f"the production server (connection {conn_id})"
            log(
                f"mongo drill: no connection {self.config.connections.drill_mongo!r}: restoring into "
                f"scratch databases on {where}"
            )
        databases = self._drill_databases(backup)
        if not databases:
            found.differences.append(f"backup {backup.backup_id} holds no database to drill")
            return
        targets = {db: drill_name(db, backup.backup_id) for db in databases}
        endpoint = self.links.endpoint(conn_id, "mongo")
        recovery.drill_mongo(endpoint, targets=targets, where=where, log=log)(backup, found)
