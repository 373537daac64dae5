"""Test set-up shared by every test folder.

Airflow is configured through the environment *before* anything imports it: a fresh
AIRFLOW_HOME per test session (stale import errors survive in an old metadata DB).
The local stack's connections and settings are not loaded here: the conftest of each folder
that needs them (dags, integration, e2e, reliability, bench) imports ``tests.stack_env``, so
``tests/unit`` runs without any server or devstack state.
Integration tests talk to the real local servers of ``python -m devstack up``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="dbops-airflow-test-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME}/airflow.db",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API_AUTH__JWT_SECRET": "test-only-jwt-secret-" + "x" * 64,
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    }
)


@pytest.fixture
def repo(tmp_path):
    """An empty BackupRepository in a temp folder (``<tmp>/backups``)."""
    from dbops.backup.repository import BackupRepository

    return BackupRepository(tmp_path / "backups")


@pytest.fixture
def backup_root(tmp_path) -> Path:
    """A fresh backup root (0700) for one test, to point ``DBOPS_BACKUP__ROOT`` at."""
    from tests.support import private_backup_root

    return private_backup_root(tmp_path)


@pytest.fixture(scope="module")
def module_backup_root(tmp_path_factory) -> Path:
    """A backup root for a whole module: one that starts its own Airflow reads it once, at start."""
    from tests.support import private_backup_root

    return private_backup_root(tmp_path_factory.mktemp("module"))


@pytest.fixture(scope="session")
def devstack():
    """The running local stack: ``devstack.conn(conn_id)`` and ``devstack.service(name)``.

    A missing service is a failure, not a skip: ``make test`` starts all of them.
    """
    import devstack as stack

    class Stack:
        def service(self, name: str):
            svc = stack.service(name)
            if not svc.running():
                pytest.fail(f"devstack service {name!r} is not running: start it with `make stores`")
            return svc

        def conn(self, conn_id: str) -> dict:
            for name in stack.SERVICES:
                svc = stack.service(name)
                conns = svc.connections()
                if conn_id in conns:
                    self.service(name)
                    return conns[conn_id]
            pytest.fail(f"no devstack service provides connection {conn_id!r}")

    return Stack()


@pytest.fixture(scope="session")
def airflow_db(devstack):
    """A fresh Airflow metadata DB with the dbops pools, and the stores' connections in env.

    DAG tests run ``dag.test()`` in this process: keep them in one session (the first
    run costs ~10 s, later ones under a second).
    """
    import json

    from airflow.utils.db import initdb

    initdb()

    from airflow.models.pool import Pool

    pools = json.loads((REPO / "include" / "airflow" / "pools.json").read_text())
    for name, pool in pools.items():
        Pool.create_or_update_pool(name, pool["slots"], pool["description"], pool["include_deferred"])
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag


def run_dag(dag, conf: dict | None = None, logical_date=None, respond: str | None = None):
    """``dag.test()`` returning the DagRun; it does not raise on failure, so callers assert.

    ``respond`` answers the run's approvals (human-in-the-loop tasks waiting under Required
    Actions) through the REST API's route: "Approve", "Reject", or "timeout" (the scheduler's
    timeout sweep once the response timeout passed). Without it, a run that waits for an
    approval fails at once and run_dag raises, naming the task (instead of hanging).

    ``dag.test()`` writes the run's conf into the Param objects of the DAG and of its tasks
    (shared with every copy of the DAG): the values they held are put back, so that a later
    run gets the defaults and not this run's conf."""
    from tests.approval_support import Responder

    held = [
        (param, param.value)
        for params in [dag.params, *(t.params for t in dag.tasks)]
        for param in (params.get_param(k) for k in params)
    ]
    # Without its deadline alerts: dag.test() (Airflow 3.3.2) hands the run's end the DAG's unsaved
    # alerts instead of their ids and fails; tests/e2e/test_runs.py checks deadlines on a scheduler.
    deadline, dag.deadline = dag.deadline, None
    try:
        with Responder(dag.dag_id, respond) as responder:
            run = dag.test(run_conf=conf or {}, logical_date=logical_date)
    finally:
        dag.deadline = deadline
        for param, value in held:
            param.value = value
    if responder.error is not None:
        raise AssertionError(f"answering the approval of {dag.dag_id} failed: {responder.error!r}") from responder.error
    if responder.unexpected:
        raise AssertionError(f"{dag.dag_id}: {'; '.join(responder.unexpected)}; pass respond='Approve' or 'Reject'")
    run.approvals = responder.answered  # what was asked and answered, for the tests to read
    return run


def task_result(dagrun, task_id: str, key: str = "return_value"):
    """The return value (or the XCom ``key``) a task of ``dagrun`` pushed, or None."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=dagrun.run_id, dag_ids=dagrun.dag_id, task_ids=task_id, key=key)
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


@pytest.fixture
def dbops_variable(airflow_db):
    """Set the Airflow Variable ``dbops_config`` (run-time config) for one test."""
    import json

    from airflow.models.variable import Variable

    def set_config(config: dict) -> None:
        Variable.set("dbops_config", json.dumps(config))

    yield set_config
    Variable.delete("dbops_config")


def without_retries(dag):
    """Failure tests: a failed task fails the run at once instead of waiting for retries."""
    for t in dag.tasks:
        t.retries = 0
    return dag
