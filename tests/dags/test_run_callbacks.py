"""Every dbops DAG ends its runs with the run alert and the run-summary event."""

from __future__ import annotations

import pytest

from dbops.run_notifiers import RunAlert, RunSummaryEvent
from tests.support import DAG_FILES


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_every_dag_has_the_run_callbacks(parsed_dags, path):
    dag = parsed_dags.dags[path.stem]
    for outcome, callbacks in (("success", dag.on_success_callback), ("failed", dag.on_failure_callback)):
        assert [type(c) for c in callbacks] == [RunAlert, RunSummaryEvent], dag.dag_id
        assert all(c.outcome == outcome for c in callbacks), dag.dag_id


def test_a_notifier_refuses_an_unknown_outcome():
    with pytest.raises(ValueError, match="outcome"):
        RunAlert("succeeded")
