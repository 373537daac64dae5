"""dbops_bootstrap as Airflow runs it (``dag.test``), against the real local stores."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_dag, task_result
from tests.support import pg_connect, task_states

pytestmark = pytest.mark.integration


def test_bootstrap_runs_green_then_a_rerun_is_green_too(dagbag, devstack, monkeypatch):
    admin = {
        "conn_type": "generic",
        "login": "platform_admin",
        "password": "Adm1n-only-in-the-connection",
        "extra": {"email": "admin@platform.example"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_DBOPS_PLATFORM_ADMIN", json.dumps(admin))
    dag = dagbag.get_dag("dbops_bootstrap")
    stores = ["postgres", "mongo", "weaviate", "redis", "kafka"]
    first = run_dag(dag, {"stores": stores})
    assert first.state == "success", task_states(first)
    states = task_states(first)
    assert states["bootstrap_postgres"] == "success"
    assert states["bootstrap_weaviate"] == "skipped"
    assert states["verify"] == "success"

    with pg_connect(devstack.conn("dbops_postgres")) as conn:
        row = conn.execute("SELECT password_hash FROM auth.users WHERE username = 'platform_admin'").fetchone()
    assert row and row[0].startswith("pbkdf2_sha256$") and admin["password"] not in row[0]

    second = run_dag(dag, {"stores": stores})
    assert second.state == "success", task_states(second)
    for task_id in ("bootstrap_postgres", "bootstrap_mongo", "bootstrap_redis", "bootstrap_kafka"):
        changes = task_result(second, task_id)["changes"]
        assert changes and all(c["action"] == "unchanged" for c in changes), changes
