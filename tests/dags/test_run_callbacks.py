"""Every dbops DAG ends its runs with the run alert and the run-summary event."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbops.run_notifiers import RunAlert, RunSummaryEvent

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted(p for p in (REPO / "dags").glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_every_dag_has_the_run_callbacks(dagbag, path):
    dag = dagbag.dags[path.stem]
    for outcome, callbacks in (("success", dag.on_success_callback), ("failed", dag.on_failure_callback)):
        assert [type(c) for c in callbacks] == [RunAlert, RunSummaryEvent], dag.dag_id
        assert all(c.outcome == outcome for c in callbacks), dag.dag_id


def test_a_notifier_refuses_an_unknown_outcome():
    with pytest.raises(ValueError, match="outcome"):
        RunAlert("succeeded")
