"""The DAG files as the dag-processor parses them. The local stack's settings (DBOPS_*) go into
the environment first: the DAG files read them at parse time."""

from __future__ import annotations

import pytest

import tests.stack_env  # noqa: F401
from tests.support import REPO


@pytest.fixture(scope="module")
def parsed_dags():
    """A DagBag of its own, with no metadata DB and import errors kept for the test to report;
    not the session's ``dagbag``, whose DAGs the run tests change (``without_retries``)."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))
