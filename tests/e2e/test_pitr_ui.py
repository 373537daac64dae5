"""Point-in-time recovery as a user drives it from Airflow (REST API of a real Airflow with
the dbops DAGs, as the UI does), against the local PostgreSQL and the devstack WAL receiver
service streaming into the devstack repository (`make run`'s set-up): a base backup, a green
WAL check, a restore of one database to a moment between two known commits, and the WAL
check's refusal of backfills."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from psycopg import sql

from tests.e2e.test_operations import _backfill, _trigger, _xcom
from tests.support import pg_connect

pytestmark = pytest.mark.integration

SOURCE, COPY = "dbops_e2e_pitr_src", "dbops_e2e_pitr_copy"


@pytest.fixture(scope="module")
def airflow_extra_env():
    """The repository the devstack receiver streams into: the one `make run` uses."""
    from devstack.core import state_dir

    return {"DBOPS_BACKUP__ROOT": str(state_dir() / "backups")}


@pytest.fixture(scope="module")
def pg(devstack):
    conn = devstack.conn("dbops_postgres")
    with pg_connect(conn, "postgres", autocommit=True) as admin:
        for name in (SOURCE, COPY):
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SOURCE)))
    with pg_connect(conn, SOURCE, autocommit=True) as c:
        c.execute("CREATE TABLE orders (id integer PRIMARY KEY)")
    yield conn
    with pg_connect(conn, "postgres", autocommit=True) as admin:
        for name in (SOURCE, COPY):
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _insert(conn: dict, first: int, last: int) -> None:
    with pg_connect(conn, SOURCE, autocommit=True) as c:
        for n in range(first, last + 1):
            c.execute("INSERT INTO orders VALUES (%s)", [n])


def _states(api, dag_id: str, run: dict) -> dict:
    return api.task_states(dag_id, run["dag_run_id"])


def test_base_backup_wal_check_and_a_restore_to_a_time_from_the_ui(airflow_api, pg):
    _insert(pg, 1, 5)
    for dag_id in ("dbops_base_backup", "dbops_wal_check", "dbops_restore"):
        airflow_api.unpause(dag_id)
    run = _trigger(airflow_api, "dbops_base_backup", {})
    assert run["state"] == "success", _states(airflow_api, "dbops_base_backup", run)
    made = _xcom(airflow_api, "dbops_base_backup", run["dag_run_id"], "base_backup")
    assert made["backup_id"] and made["consistent_at"]

    _insert(pg, 6, 10)
    time.sleep(1.1)
    target = datetime.now(UTC)
    time.sleep(1.1)
    _insert(pg, 11, 15)  # after the target
    check = _trigger(airflow_api, "dbops_wal_check", {})  # its marker commit also completes the picture
    assert check["state"] == "success", _states(airflow_api, "dbops_wal_check", check)
    result = _xcom(airflow_api, "dbops_wal_check", check["dag_run_id"], "check_wal")
    assert result["ok"] is True and result["earliest"] <= target.isoformat().replace("+00:00", "Z") <= result["latest"]

    run = _trigger(
        airflow_api,
        "dbops_restore",
        {
            "store": "postgres",
            "backup_id": "latest",
            "database": SOURCE,
            "target": COPY,
            "confirm_overwrite": "",
            "topics": [],
            "target_time": target.isoformat(),
            "target_lsn": "",
            "target_name": "",
        },
    )
    states = _states(airflow_api, "dbops_restore", run)
    assert run["state"] == "success", states
    assert states["restore_postgres_pitr"] == "success" and states["restore_postgres"] == "skipped", states
    with pg_connect(pg, COPY) as c:
        assert [r[0] for r in c.execute("SELECT id FROM orders ORDER BY id")] == list(range(1, 11))
    copied = _xcom(airflow_api, "dbops_restore", run["dag_run_id"], "restore_postgres_pitr")
    assert copied["kept"] is False and copied["copied"]["target"] == COPY


def test_the_wal_check_refuses_backfills(airflow_api):
    refused = _backfill(airflow_api, "dbops_wal_check")
    assert refused.returncode != 0
    assert "does not allow backfill" in refused.stdout + refused.stderr
    runs = airflow_api.call("GET", "/dags/dbops_wal_check/dagRuns?run_type=backfill")["dag_runs"]
    assert runs == [], json.dumps(runs)[:500]
