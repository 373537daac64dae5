"""dbops_bootstrap as Airflow runs it (``dag.test``), against the real local stores."""

from __future__ import annotations

import pytest

from tests.conftest import run_dag, task_result

pytestmark = pytest.mark.integration


def _states(dagrun) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dagrun.get_task_instances()}


def test_bootstrap_runs_green_then_a_rerun_is_green_too(dagbag):
    dag = dagbag.get_dag("dbops_bootstrap")
    stores = ["postgres", "mongo", "weaviate", "redis", "kafka"]
    first = run_dag(dag, {"stores": stores})
    assert first.state == "success", _states(first)
    states = _states(first)
    assert states["bootstrap_postgres"] == "success"
    assert states["bootstrap_weaviate"] == "skipped"
    assert states["verify"] == "success"

    second = run_dag(dag, {"stores": stores})
    assert second.state == "success", _states(second)
    for task_id in ("bootstrap_postgres", "bootstrap_mongo", "bootstrap_redis", "bootstrap_kafka"):
        changes = task_result(second, task_id)["changes"]
        assert changes and all(c["action"] == "unchanged" for c in changes), changes
