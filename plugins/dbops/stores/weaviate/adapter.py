"""The Weaviate adapter: backups in Weaviate's own backend, recorded in the repository.

One series (``None``). The server is reached as ``with links.weaviate(conn_id) as api``
(``api.session``, ``api.base_url``: REST, because the v4 client refuses servers older than
1.27); when no connection exists, StoreNotConfigured makes the task skip, saying so.
Not drillable: Weaviate restores classes only under their own names, into a server that
lacks them, so there is no scratch target. No Airflow import.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from dbops.backup.adapter import (
    DrillComparison,
    ExpiryRefused,
    LogFn,
    RestorePlan,
    RestoreRefused,
    RestoreRequest,
    SingleSeriesAdapter,
    StoreNotConfigured,
)
from dbops.stores.weaviate.backup import (
    RECORD_FILE,
    WeaviateApi,
    WeaviateBackup,
    WeaviateError,
    delete_s3_objects,
    s3_location,
)
from dbops.stores.weaviate.recovery import compare_counts, plan_weaviate, read_record, restore_weaviate

if TYPE_CHECKING:
    from dbops.backup.adapter import Links
    from dbops.backup.repository import Backup
    from dbops.config import DbopsConfig


class WeaviateExpiryRefused(ExpiryRefused, WeaviateError):
    """dbops cannot remove this backup from its backend: retention must keep its record."""


class WeaviateAdapter(SingleSeriesAdapter):
    store = "weaviate"
    drillable = False

    def __init__(self, config: DbopsConfig, links: Links) -> None:
        super().__init__(config, links)
        self.conn_id = config.connections.weaviate
        self.settings = config.weaviate

    def _connect(self):
        return self.links.weaviate(self.conn_id)

    def _require_connection(self) -> None:
        if not self.links.connection_exists(self.conn_id):
            raise StoreNotConfigured(f"no Weaviate configured (no Airflow connection {self.conn_id!r})")

    def _in_use(self) -> set[str]:
        """Weaviate ids recorded by complete backups in the repository."""
        from dbops.backup.repository import BackupRepository

        repo = BackupRepository(self.config.backup.root, allowed_base=self.config.backup.allowed_base)
        ids = set()
        for backup in repo.list(self.store):
            try:
                ids.add(json.loads((backup.path / RECORD_FILE).read_text())["id"])
            except (OSError, ValueError, KeyError):
                continue
        return ids

    def _discard(self, backend: str, wid: str, status: dict[str, Any], log: LogFn) -> None:
        """Remove an attempt's backup (failed, or an earlier attempt's) from its backend."""
        if backend != "s3":
            log(f"weaviate: backup {wid} is left in backend {backend!r}: dbops can remove backups only from s3")
            return
        bucket, key = s3_location(backend, wid, status.get("path"), bucket=self.settings.s3_bucket)
        delete_s3_objects(self.links.s3_client(self.settings.s3_connection), bucket, key, log)

    # ------------------------------------------------------------------ backup

    def series(self, log: LogFn) -> list[str | None]:
        self._require_connection()
        return [None]

    def series_backup(self, subject: str | None, run_key: str | None = None) -> WeaviateBackup:
        """``run_key`` names the run, so that its retries reuse its Weaviate backup ids; by
        default the run Airflow names in every task's environment."""
        self.check_series(subject)
        self._require_connection()
        if run_key is None and os.environ.get("AIRFLOW_CTX_DAG_RUN_ID"):
            run_key = f"{os.environ.get('AIRFLOW_CTX_DAG_ID', '')}/{os.environ['AIRFLOW_CTX_DAG_RUN_ID']}"
        return WeaviateBackup(
            self._connect,
            backend=self.settings.backup_backend,
            timeout=self.settings.backup_timeout_s,
            run_key=run_key,
            in_use=self._in_use,
            discard=self._discard,
        )

    def expire(self, backup: Backup, log: LogFn) -> None:
        """Delete the backup's objects from its s3 backend (Weaviate 1.22 has no delete of
        backups; 1.39's DELETE cancels a running one). Other backends: WeaviateExpiryRefused."""
        record = json.loads((backup.path / RECORD_FILE).read_text())
        wid, backend = record["id"], record["backend"]
        if backend != "s3":
            raise WeaviateExpiryRefused(
                f"weaviate backup {backup.backup_id} (Weaviate id {wid}) is in backend {backend!r}, which dbops "
                "cannot reach: it is not expired and its record is kept. Remove it on the Weaviate server, "
                "and use the s3 backend (weaviate.backup_backend: s3)"
            )
        try:
            bucket, key = s3_location(backend, wid, record.get("path"), bucket=self.settings.s3_bucket)
        except ValueError as exc:
            raise WeaviateExpiryRefused(f"weaviate backup {backup.backup_id}: not expired: {exc}") from None
        if record.get("bucket") and record["bucket"] != bucket:
            raise WeaviateExpiryRefused(
                f"weaviate backup {backup.backup_id}: Weaviate reported bucket {record['bucket']!r} and path "
                f"{record.get('path')!r}: not expired"
            )
        deleted = delete_s3_objects(self.links.s3_client(self.settings.s3_connection), bucket, key, log)
        if not deleted:
            log(f"weaviate: backup {wid} had no objects left under s3://{bucket}/{key}/ (already expired)")

    # ------------------------------------------------------------------ restore

    def check_request(self, request: RestoreRequest) -> None:
        if request.topics:
            raise RestoreRefused("topics applies to store kafka only")
        for name, value in (("database", request.database), ("target", request.target)):
            if value:
                raise RestoreRefused(
                    f"{name} does not apply to weaviate: the backup's classes are restored under their own "
                    f"names into the Weaviate of connection {self.conn_id!r}"
                )
        if not isinstance(request.accept_unsafe_version, bool):
            raise RestoreRefused(f"accept_unsafe_version must be true or false, got {request.accept_unsafe_version!r}")

    def restore_subject(self, request: RestoreRequest) -> str | None:
        self._require_connection()  # before a backup is looked for: no connection, no restore
        return None

    def plan_restore(self, backup: Backup, request: RestoreRequest, log: LogFn) -> RestorePlan:
        self._require_connection()
        with self._connect() as link:
            api = WeaviateApi(link.session, link.base_url)
            checked = plan_weaviate(api, backup, accept_unsafe=request.accept_unsafe_version, log=log)
        classes = checked["classes"]
        actions = (
            [f"nothing: classes {', '.join(classes)} exist and Weaviate restored backup {checked['id']} already"]
            if checked["already"]
            else [
                f"restore classes {', '.join(classes)} (they do not exist) from Weaviate backup {checked['id']} "
                f"in backend {checked['backend']} ({checked['path']}), on Weaviate {checked['server_version']}"
            ]
        )
        for line in actions:
            log(f"plan: {line}")
        return RestorePlan(
            store=self.store,
            subject=None,
            backup_id=backup.backup_id,
            source=None,
            target=self.conn_id,
            exists=checked["exists"],
            already=checked["already"],
            overwrite=False,
            actions=actions,
            details={**checked, "accept_unsafe_version": request.accept_unsafe_version},
        )

    def restore(self, backup: Backup, plan: RestorePlan, log: LogFn) -> dict[str, Any]:
        read_record(backup)
        with self._connect() as link:
            api = WeaviateApi(link.session, link.base_url)
            return restore_weaviate(
                api,
                backup,
                accept_unsafe=bool(plan.details.get("accept_unsafe_version")),
                timeout=self.config.restore.weaviate_timeout_s,
                log=log,
            )

    def compare(self, expected: dict[str, Any], actual: dict[str, Any]) -> tuple[list[str], list[str]]:
        return compare_counts(expected, actual.get("counts", actual))

    # ------------------------------------------------------------------ drill

    def drill_target(self, backup: Backup) -> str:
        return "none: Weaviate backups are not drilled (no scratch target)"

    def drill(self, backup: Backup, found: DrillComparison, log: LogFn) -> None:
        raise NotImplementedError(
            "Weaviate backups cannot be drilled: Weaviate restores classes only under their own names, into a "
            "server that lacks them, so there is no scratch target (restore on another Weaviate to test one)"
        )
