"""The DAG callbacks as a real Airflow runs them: the scheduler sends the end of a run to the
dag-processor, which calls the callbacks; the run's summary arrives in Kafka and Mongo."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from dbops.backup.repository import BackupRepository
from tests.e2e.conftest import AirflowAPI
from tests.events_support import TOPIC, ensure_topic, kafka_events, mongo_events

pytestmark = pytest.mark.integration

DAG = "dbops_nightly_backup"


@pytest.fixture(scope="module")
def airflow_with_events(devstack, backup_root):
    """Its own Airflow instance (port ``DBOPS_E2E_AIRFLOW_PORT``), with Kafka and Mongo events on."""
    from devstack.core import load_secrets
    from devstack.services.airflow import Airflow

    ensure_topic(devstack.conn("dbops_kafka"), TOPIC)
    port = int(os.environ.get("DBOPS_E2E_AIRFLOW_PORT", "58090"))
    instance = Airflow(
        name=f"airflow-e2e-events-{port}",
        port=port,
        extra_env={
            "DBOPS_BACKUP__ROOT": str(backup_root),
            "DBOPS_BACKUP__STORES": '["redis"]',
            "DBOPS_NOTIFY__KAFKA_EVENTS": "true",
            "DBOPS_NOTIFY__MONGO_EVENTS": "true",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        },
    )
    shutil.rmtree(instance.dir, ignore_errors=True)  # a fresh metadata DB every time
    instance.up()
    try:
        yield AirflowAPI(instance.url(), load_secrets()["airflow_admin"])
    finally:
        instance.stop()


def _arrived(devstack, run_id: str, timeout: float = 180) -> tuple[list[dict], list[dict]]:
    """The run's event in Kafka and Mongo, once the dag-processor has run the callback."""
    deadline = time.monotonic() + timeout
    while True:
        in_mongo = mongo_events(devstack.conn("dbops_mongo"), run_id)
        if in_mongo or time.monotonic() > deadline:
            return kafka_events(devstack.conn("dbops_kafka"), TOPIC, run_id, timeout=20), in_mongo
        time.sleep(3)


def test_the_dag_processor_publishes_the_summary_of_a_run(airflow_with_events, backup_root, devstack):
    api = airflow_with_events
    api.unpause_and_settle(DAG)  # the scheduled run that unpausing starts
    run = api.call(
        "POST",
        f"/dags/{DAG}/dagRuns",
        {"logical_date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "conf": {"stores": ["redis"]}},
    )
    run_id = run["dag_run_id"]
    api.wait_until_idle(DAG)
    finished = api.call("GET", f"/dags/{DAG}/dagRuns/{run_id}")
    assert finished["state"] == "success", api.task_states(DAG, run_id)

    in_kafka, in_mongo = _arrived(devstack, run_id)
    assert len(in_kafka) == 1 and len(in_mongo) == 1, (in_kafka, in_mongo)
    details = in_kafka[0]["details"]
    assert in_mongo[0]["details"] == details and in_mongo[0]["_id"] == in_kafka[0]["id"]
    backup = BackupRepository(backup_root).find_by_run("redis", None, run_id, dag_id=DAG)
    assert backup is not None
    assert details["dag"] == DAG and details["run"] == run_id and details["outcome"] == "success"
    assert details["run_type"] == "manual"
    assert details["stores"] == ["redis"] and details["total_bytes"] == backup.total_bytes > 0
    assert [(b["store"], b["backup_id"]) for b in details["backups"]] == [("redis", backup.backup_id)]
    assert details["duration_s"] > 0 and details["ended_at"] is not None
    assert {t["task"]: t["state"] for t in details["tasks"]}["retention_redis"] == "success"
    assert "problems" not in details, details["problems"]
