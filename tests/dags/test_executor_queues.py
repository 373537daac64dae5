"""Scaling out: each store's heavy tasks can be routed to an executor queue of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dbops.config import ConfigError, load_config
from tests.conftest import REPO

PROBE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(sys.argv[1])
assert not bag.import_errors, bag.import_errors
print(json.dumps({f"{d}.{t.task_id}": [t.pool, t.queue] for d, dag in bag.dags.items() for t in dag.tasks}))
"""


def _parsed_tasks(extra_env: dict[str, str]) -> dict[str, list[str]]:
    env = dict(os.environ, **extra_env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "plugins"), str(REPO)])
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO / "dags")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_queues_per_store_route_only_that_stores_heavy_tasks():
    default = _parsed_tasks({})
    routed = _parsed_tasks(
        {"DBOPS_EXECUTOR__QUEUES": json.dumps({"postgres": "dbops-postgres", "redis": "dbops-redis"})}
    )
    assert default.keys() == routed.keys()
    default_queue = default["dbops_nightly_backup.backup_mongo"][1]
    for task, (pool, queue) in routed.items():
        expected = {"dbops_postgres": "dbops-postgres", "dbops_redis": "dbops-redis"}.get(pool, default_queue)
        assert queue == expected, task
        assert default[task] == [pool, default_queue], task
    assert routed["dbops_nightly_backup.backup_postgres"] == ["dbops_postgres", "dbops-postgres"]
    assert routed["dbops_pg_maintenance.vacuum_analyze"][1] == "dbops-postgres"
    assert routed["dbops_restore.restore_redis"] == ["dbops_redis", "dbops-redis"]


@pytest.mark.parametrize("queues", [{"postgres": "bad queue"}, {"nosuchstore": "q"}, {"redis": ""}])
def test_a_bad_queue_setting_is_refused_naming_it(queues, monkeypatch):
    monkeypatch.setenv("DBOPS_EXECUTOR__QUEUES", json.dumps(queues))
    with pytest.raises(ConfigError, match="executor.queues"):
        load_config()
