"""The PostgreSQL store adapter: backup, restore and drill of every database and the roles.

Series: one per database (named by :func:`~dbops.stores.postgres.backup.series_name`:
the database's own name, or a slug and a short hash when the name is not a valid series
name, e.g. ``Sales``), plus ``_globals`` (roles and tablespaces, ``pg_dumpall
--globals-only``). Without ``postgres.databases`` every database of the server is backed
up except templates, databases that accept no connections, Airflow's own metadata
database, dbops' restore targets and set-aside copies, drill scratch databases and
``postgres.exclude_databases``; the log says which were left out and why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row

from dbops.backup.adapter import (
    BackupRefused,
    DrillComparison,
    DrillEnvironmentError,
    Endpoint,
    Links,
    LogFn,
    RestorePlan,
    RestoreRefused,
    RestoreRequest,
    SeriesBackup,
)
from dbops.backup.restore import DRILL_PREFIX, GLOBALS_SUBJECT, default_target, drill_name
from dbops.sqlfiles import load_sql
from dbops.stores.postgres import recovery
from dbops.stores.postgres.backup import (
    PostgresDatabaseBackup,
    PostgresGlobalsBackup,
    pg_connect,
    series_name,
)

if TYPE_CHECKING:
    from dbops.backup.repository import Backup
    from dbops.config import DbopsConfig

# Names of what a restore leaves behind for a moment (the copy being built) or on purpose
# (the old database an overwrite set aside): never a database to back up nightly.
RESTORE_COPY_INFIX = "__dbops_restore_"
SET_ASIDE_INFIX = "_dbops_old_"


def select_databases(endpoint: Endpoint, exclude: list[str], log: LogFn) -> list[str]:
    """Every database worth a nightly backup, each exclusion logged with its reason."""
    with pg_connect(endpoint, endpoint.database or "postgres", autocommit=True) as conn:
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(load_sql("backup/pg_databases.sql")).fetchall()
    selected: list[str] = []
    excluded: list[tuple[str, str]] = []
    for row in rows:
        name = row["name"]
        if row["is_template"]:
            excluded.append((name, "a template"))
        elif not row["allow_connections"]:
            excluded.append((name, "accepts no connections (datallowconn is false)"))
        elif name.startswith(DRILL_PREFIX):
            excluded.append((name, "a restore drill's scratch database"))
        elif row["restore_target"]:
            excluded.append((name, "a dbops restore target (marked with dbops.restored_from)"))
        elif RESTORE_COPY_INFIX in name:
            excluded.append((name, "a restored copy being built"))
        elif SET_ASIDE_INFIX in name:
            excluded.append((name, "an old database a restore set aside"))
        elif name in exclude:
            excluded.append((name, "listed in postgres.exclude_databases"))
        elif _is_airflow_metadata(endpoint, name, log):
            excluded.append((name, "Airflow's metadata database (it holds alembic_version and dag_run)"))
        else:
            selected.append(name)
    for name, why in excluded:
        log(f"postgres: not backing up database {name!r}: {why}")
    log(f"postgres: {len(selected)} database(s) to back up: {', '.join(repr(n) for n in selected) or 'none'}")
    return selected


def _is_airflow_metadata(endpoint: Endpoint, database: str, log: LogFn) -> bool:
    try:
        with pg_connect(endpoint, database, autocommit=True) as conn:
            row = conn.execute(load_sql("backup/pg_airflow_metadata.sql")).fetchone()
    except psycopg.Error as exc:  # backed up anyway: its own backup task then fails, visibly
        log(f"postgres: could not look into database {database!r} ({str(exc).strip()}); it is backed up")
        return False
    return bool(row and row[0])


class PostgresAdapter:
    """PostgreSQL for the whole life of a backup (see :class:`dbops.backup.adapter.StoreAdapter`)."""

    store = "postgres"
    drillable = True

    def __init__(self, config: DbopsConfig, links: Links) -> None:
        self.config = config
        self.links = links
        self._endpoint: Endpoint | None = None

    @property
    def endpoint(self) -> Endpoint:
        if self._endpoint is None:
            self._endpoint = self.links.endpoint(self.config.connections.postgres, "postgres")
        return self._endpoint

    # ------------------------------------------------------------------ backup

    def databases(self, log: LogFn) -> list[str]:
        """The databases (real names) the nightly backup takes."""
        configured = self.config.postgres.databases
        if configured is not None:
            missing = sorted(set(configured) - set(self._server_databases()))
            if missing:  # refused before any backup: a retry cannot create them
                raise BackupRefused(
                    f"postgres.databases names database(s) that do not exist on "
                    f"{self.endpoint.host}:{self.endpoint.port}: {missing}; nothing was backed up"
                )
            log(f"postgres: databases to back up (postgres.databases): {configured}")
            return list(configured)
        return select_databases(self.endpoint, list(self.config.postgres.exclude_databases), log)

    def _server_databases(self) -> list[str]:
        with pg_connect(self.endpoint, self.endpoint.database or "postgres", autocommit=True) as conn:
            return [r[0] for r in conn.execute(load_sql("backup/pg_databases.sql"))]

    def series(self, log: LogFn) -> list[str | None]:
        databases = self.databases(log)
        by_series: dict[str, str] = {}
        for database in databases:
            series = series_name(database)
            if series in by_series:
                raise BackupRefused(
                    f"databases {by_series[series]!r} and {database!r} would share backup series {series!r}; "
                    "exclude one in postgres.exclude_databases"
                )
            by_series[series] = database
            if series != database:
                log(f"postgres: database {database!r} is backed up as series {series!r}")
        return [*by_series, GLOBALS_SUBJECT]

    def database_of(self, subject: str) -> str:
        """The real database name of a series (the server's, or the configured list's)."""
        configured = self.config.postgres.databases
        names = list(configured) if configured is not None else self._server_databases()
        matches = [n for n in names if series_name(n) == subject]
        if len(matches) != 1:
            found = "no database" if not matches else f"databases {matches}"
            raise BackupRefused(f"backup series {subject!r}: {found} of this server has that series name")
        return matches[0]

    def series_backup(self, subject: str | None) -> SeriesBackup:
        if subject == GLOBALS_SUBJECT:
            return PostgresGlobalsBackup(self.endpoint, maintenance_db=self.endpoint.database or "postgres")
        if not subject:
            raise BackupRefused("postgres backs up one series per database: name the series")
        return PostgresDatabaseBackup(
            self.endpoint,
            self.database_of(subject),
            jobs=self.config.postgres.dump_jobs,
            compression=self.config.postgres.compression,
        )

    def expire(self, backup: Backup, log: LogFn) -> None:
        """Nothing: a Postgres backup is all in its folder."""

    # ------------------------------------------------------------------ restore

    def check_request(self, request: RestoreRequest) -> None:
        recovery.check_request(request)

    def restore_subject(self, request: RestoreRequest) -> str | None:
        database = request.database or self.endpoint.database
        if not database:
            raise RestoreRefused(
                f"name the database: connection {self.config.connections.postgres!r} has none (schema) to default to"
            )
        return series_name(recovery.check_pg_database(database))

    def plan_restore(self, backup: Backup, request: RestoreRequest, log: LogFn) -> RestorePlan:
        if backup.subject == GLOBALS_SUBJECT:
            recovery.check_pg_database(GLOBALS_SUBJECT)  # refuses, saying why
        source = recovery.source_database(backup)
        wanted = request.database or self.endpoint.database
        if wanted and wanted != source:
            raise RestoreRefused(
                f"backup {backup.backup_id} of series {backup.subject!r} holds database {source!r}, not {wanted!r}"
            )
        target = request.target or default_target(source, backup.backup_id)
        plan = recovery.plan_postgres(self.endpoint, backup, source=source, target=target, confirm=request.confirm)
        for action in plan.actions:
            log(f"plan: {action}")
        return plan

    def restore(self, backup: Backup, plan: RestorePlan, log: LogFn) -> dict[str, Any]:
        # Planned again against the target as it is now: a rerun after a completed restore
        # finds the marker; a target that appeared since the plan needs a confirmation.
        request = RestoreRequest(
            store="postgres",
            backup_id=backup.backup_id,
            database=plan.source or "",
            target=plan.target,
            confirm=plan.target if plan.overwrite else "",  # confirmed at plan time, or not at all
        )
        current = self.plan_restore(backup, request, log)
        return recovery.restore_postgres(self.endpoint, backup, current, jobs=self.config.restore.jobs, log=log)

    def compare(self, expected: dict[str, Any], actual: dict[str, Any]) -> tuple[list[str], list[str]]:
        return recovery.compare_postgres(expected, actual)

    # ------------------------------------------------------------------ drill

    def _drill_cluster(self, log: LogFn) -> tuple[Endpoint, str, bool]:
        conn_id = self.config.connections.drill_postgres
        if self.links.connection_exists(conn_id):
            try:
                endpoint = self.links.endpoint(conn_id, "postgres")
            except Exception as exc:
                raise DrillEnvironmentError(f"the drill connection {conn_id!r} cannot be used: {exc}") from exc
            where = f"drill cluster {conn_id} ({endpoint.host}:{endpoint.port})"
            log(f"drilling on the {where}")
            return endpoint, where, True
        endpoint = self.endpoint
        where = f"production cluster {self.config.connections.postgres} ({endpoint.host}:{endpoint.port})"
        log(
            f"no Airflow connection {conn_id!r}: the drill restores a full copy into the {where}; "
            f"define {conn_id!r} to drill on a separate cluster"
        )
        return endpoint, where, False

    def drill_target(self, backup: Backup) -> str | list[str]:
        if backup.subject == GLOBALS_SUBJECT:
            return "globals.sql (roles read and compared, not applied)"
        return drill_name(backup.subject or "", backup.backup_id)

    def drill(self, backup: Backup, found: DrillComparison, log: LogFn) -> None:
        if backup.subject == GLOBALS_SUBJECT:
            recovery.drill_postgres_globals(log)(backup, found)
            return
        endpoint, where, separate = self._drill_cluster(log)
        target = drill_name(backup.subject or "", backup.backup_id)
        run = recovery.drill_postgres(
            endpoint, target=target, jobs=self.config.restore.jobs, where=where, separate_cluster=separate, log=log
        )
        run(backup, found)
