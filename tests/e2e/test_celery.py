"""The docker-compose deployment's executor, without Docker: CeleryExecutor.

Scheduler, dag-processor, API server and a Celery worker run as separate processes
(``devstack.services.airflow_celery``), with a database of the local PostgreSQL as the
metadata DB and result backend and a Redis of its own as the broker. A backup triggered
through the REST API must run on the worker: the Celery result backend records it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from dbops.backup.repository import BackupRepository
from tests.e2e.conftest import AirflowAPI

pytestmark = pytest.mark.integration

DAG = "dbops_nightly_backup"


@pytest.fixture(scope="module")
def celery_airflow(devstack, tmp_path_factory):
    from devstack.core import load_secrets
    from devstack.services.airflow_celery import AirflowCelery

    backup_root = tmp_path_factory.mktemp("celery") / "backups"
    backup_root.mkdir(mode=0o700)
    instance = AirflowCelery(
        extra_env={
            "DBOPS_BACKUP__ROOT": str(backup_root),
            "DBOPS_BACKUP__STORES": '["redis", "kafka"]',
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        },
    )
    instance.stop()
    instance.drop_database()
    try:
        instance.up()
        yield instance, AirflowAPI(instance.url(), load_secrets()["airflow_admin"]), backup_root
    finally:
        instance.stop()
        instance.drop_database()


def _celery_task_results(instance, timeout: float = 60) -> dict[str, str]:
    """Celery task id -> final status, once no task is still PENDING or STARTED.

    The worker stores a task's final status only after the Airflow task process has exited,
    so the API can report a run finished a moment before its last result is final.
    """
    import psycopg

    from devstack.services.postgres import Postgres

    postgres = Postgres().connections()["dbops_postgres"]
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(
            host=postgres["host"],
            port=postgres["port"],
            user=postgres["login"],
            password=postgres["password"],
            dbname=instance.database,
        ) as conn:
            if conn.execute("SELECT to_regclass('celery_taskmeta')").fetchone()[0] is None:
                results = {}  # created by the result backend with the first result
            else:
                results = dict(conn.execute("SELECT task_id, status FROM celery_taskmeta").fetchall())
        if not {"PENDING", "STARTED"} & set(results.values()) or time.monotonic() > deadline:
            return results
        time.sleep(1)


def test_nightly_backup_runs_on_a_celery_worker(celery_airflow):
    instance, api, backup_root = celery_airflow
    health = api.call("GET", "/monitor/health")
    assert health["metadatabase"]["status"] == "healthy"
    api.unpause_and_settle(DAG)  # the scheduled run an unpause starts
    results_before = _celery_task_results(instance)

    run = api.call(
        "POST",
        f"/dags/{DAG}/dagRuns",
        {"logical_date": datetime.now(UTC).isoformat(), "conf": {"stores": ["redis"]}},
    )
    api.wait_until_idle(DAG, timeout=600)
    finished = api.call("GET", f"/dags/{DAG}/dagRuns/{run['dag_run_id']}")
    states = api.task_states(DAG, run["dag_run_id"])
    assert finished["state"] == "success", states
    assert states["backup_redis"] == "success" and states["backup_kafka"] == "skipped"

    # every task that ran went through Celery: one SUCCESS result per executed task
    ran = [task for task, state in states.items() if state == "success"]
    results = _celery_task_results(instance)
    of_this_run = {task: status for task, status in results.items() if task not in results_before}
    assert len(of_this_run) >= len(ran), (of_this_run, ran)
    assert set(of_this_run.values()) == {"SUCCESS"}, of_this_run
    tis = api.call("GET", f"/dags/{DAG}/dagRuns/{run['dag_run_id']}/taskInstances")["task_instances"]
    backup_ti = next(t for t in tis if t["task_id"] == "backup_redis")
    assert backup_ti["queue"] == "default"

    backup = BackupRepository(backup_root).find_by_run("redis", None, run["dag_run_id"], dag_id=DAG)
    assert backup is not None and backup.verified
