"""A real Airflow (scheduler, LocalExecutor, REST API, the dbops pools) for the bad-input and
concurrency tests: one instance per test session, on the port ``DBOPS_E2E_AIRFLOW_PORT`` names
(one per concurrent test session), with a scratch PostgreSQL database as its platform
database and a private backup root."""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from psycopg import sql

from tests.e2e.conftest import E2E_PORT, AirflowAPI
from tests.support import pg_connect

# A bit of real work for pg_dump and VACUUM: the heavy tasks take seconds, not milliseconds.
TABLE_ROWS = 300_000


def _scratch_platform_database(conn: dict, name: str) -> None:
    from dbops.migrations import MigrationRunner
    from dbops.report import StoreReport
    from dbops.stores.postgres.bootstrap import migrations

    with pg_connect(conn, "postgres", autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with pg_connect(conn, name) as c:
        MigrationRunner(c, migrations()).run(StoreReport("postgres"))
        c.execute("CREATE TABLE public.load (id int PRIMARY KEY, body text)")
        c.execute(
            "INSERT INTO public.load SELECT g, md5(g::text) || repeat('x', 100) FROM generate_series(1, %s) g",
            [TABLE_ROWS],
        )
        c.commit()


def dead_tuples(conn: dict, name: str) -> None:
    """Give VACUUM (ANALYZE) of dbops_pg_maintenance something to do."""
    with pg_connect(conn, name, autocommit=True) as c:
        c.execute("DELETE FROM public.load WHERE id % 2 = 0")
        c.execute(
            "INSERT INTO public.load SELECT g, md5(g::text) FROM generate_series(%s, %s) g",
            [TABLE_ROWS + 1, TABLE_ROWS + TABLE_ROWS // 2],
        )


@pytest.fixture(scope="session")
def live_airflow(devstack, tmp_path_factory):
    """(api, namespace of the instance: backup_root, pg conn dict, pg database)."""
    from devstack.core import load_secrets
    from devstack.services.airflow import Airflow

    pg = devstack.conn("dbops_postgres")
    database = f"dbops_rel_{uuid.uuid4().hex[:10]}"
    root = tmp_path_factory.mktemp("reliability-airflow") / "backups"
    root.mkdir(mode=0o700)
    _scratch_platform_database(pg, database)
    platform = {
        "conn_type": "postgres",
        "host": pg["host"],
        "port": pg["port"],
        "login": pg["login"],
        "password": pg["password"],
        "schema": database,
    }
    port = E2E_PORT
    instance = Airflow(
        name=f"airflow-reliability-{port}",
        port=port,
        extra_env={
            "AIRFLOW_CONN_DBOPS_POSTGRES": json.dumps(platform),
            "DBOPS_BACKUP__ROOT": str(root),
            "DBOPS_BACKUP__STORES": '["redis", "kafka"]',  # the scheduled run: quick stores
            "DBOPS_POSTGRES__DATABASES": json.dumps([database]),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        },
    )
    instance.stop()  # left over by an interrupted session
    shutil.rmtree(instance.dir, ignore_errors=True)  # a fresh home and metadata DB every time
    instance.drop_database()
    try:
        instance.up()
        yield (
            AirflowAPI(instance.url(), load_secrets()["airflow_admin"]),
            SimpleNamespace(root=root, pg=pg, database=database, dir=instance.dir),
        )
    finally:
        instance.stop()
        instance.drop_database()
        with pg_connect(pg, "postgres", autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def task_instances(api: AirflowAPI, dag_id: str, run_id: str) -> list[dict]:
    return api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=200")["task_instances"]


def interval(ti: dict) -> tuple[datetime, datetime]:
    return parse_time(ti["start_date"]), parse_time(ti["end_date"])


def overlaps(a: tuple[datetime, datetime], b: tuple[datetime, datetime]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def backup_manifests(root: Path, store: str, subject: str | None = None) -> list[dict]:
    series = root / store / subject if subject else root / store
    return [json.loads(p.read_text()) for p in sorted(series.glob("*/manifest.json"))]
