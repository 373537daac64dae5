"""The test harness's approval responder answers only once dag.test() says it waits: an answer
recorded before dag.test() writes the parked state once more is undone (Airflow 3.3.2), and the
run then waits forever. Its answering itself is exercised by every approval in tests/integration."""

from __future__ import annotations

import logging
import time

import pytest

from tests import approval_support
from tests.approval_support import DAG_TEST_LOGGER, WAITING_FOR_INPUT, Responder


def _waiting_line() -> None:
    logging.getLogger(DAG_TEST_LOGGER).info(WAITING_FOR_INPUT + " for tasks: %s", ["approve"])


@pytest.fixture
def responder():
    r = Responder("dbops_restore", "Approve")
    r._stop.set()  # no polling thread: only the gate is tested here, with no metadata DB
    logger = logging.getLogger(DAG_TEST_LOGGER)
    level, handlers = logger.level, list(logger.handlers)
    with r:
        yield r
    assert logger.level == level and logger.handlers == handlers  # dag.test()'s logger left as it was


def test_a_parked_task_is_answered_only_after_dag_test_says_it_waits(responder):
    assert responder._parked_in_loop("ti-1") is False  # parked in the DB, dag.test() not back in its loop
    logging.getLogger(DAG_TEST_LOGGER).info("[DAG TEST] end task task_id=approve map_index=-1")
    assert responder._parked_in_loop("ti-1") is False  # another line of dag.test() is not the one
    _waiting_line()
    assert responder._parked_in_loop("ti-1") is True
    # a line logged before a task was first seen parked does not count for it
    assert responder._parked_in_loop("ti-2") is False
    _waiting_line()
    assert responder._parked_in_loop("ti-2") is True


def test_a_waiting_line_that_never_comes_is_an_error_naming_it(responder, monkeypatch):
    assert responder._parked_in_loop("ti-1") is False
    monkeypatch.setattr(approval_support, "NO_WAITING_LINE_AFTER", 0.01)
    time.sleep(0.02)
    with pytest.raises(AssertionError, match=WAITING_FOR_INPUT):
        responder._parked_in_loop("ti-1")
