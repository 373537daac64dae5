"""Answering the approvals (human-in-the-loop) of runs that ``dag.test()`` drives in-process.

``dag.test()`` keeps looping while a task waits in AWAITING_INPUT, until a response is recorded
in the same metadata DB. :class:`Responder` is that person: a thread that finds the run's
waiting task and records the answer through the REST API's own route function
(``PATCH .../hitlDetails``), or lets the response timeout pass and runs the scheduler's
timeout sweep. Without an answer to give it fails the waiting task at once and says so,
instead of leaving the test hanging.

It answers only once ``dag.test()`` has said it waits for the input, as a person would answer
a request they can see. The task's state turns AWAITING_INPUT inside ``dag.test()``'s run of
the task, which then writes that state once more when the run returns (Airflow 3.3.2): an
answer recorded in between is undone, the task is parked again with its response recorded,
and ``dag.test()`` waits forever. Measured: polling every 20 ms, the sixth approval answered
hung so; polling every 0.5 s, one approval of a whole CI run did.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

APPROVE, REJECT, TIMEOUT = "Approve", "Reject", "timeout"

# dag.test()'s own logger and the line it logs on each turn of its loop while a task is parked
DAG_TEST_LOGGER = "airflow.sdk.definitions.dag"
WAITING_FOR_INPUT = "Waiting for Human-in-the-loop input"
# dag.test() logs that line every second while it waits: long without it, the line has changed
NO_WAITING_LINE_AFTER = 60.0


class _WaitingLines(logging.Handler):
    """Counts dag.test()'s "waiting for input" lines: one logged after a task was seen parked
    means dag.test() is in its loop again, past its own write of the parked state."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(WAITING_FOR_INPUT):
            self.count += 1


class ApprovingUser:
    """The minimal authenticated user the route function records as the respondent."""

    def get_id(self) -> str:
        return "dbops-test"

    def get_name(self) -> str:
        return "dbops-test"


@dataclass
class Responder:
    dag_id: str
    respond: str | None  # "Approve", "Reject", "timeout" (let it pass), or None: no approval expected
    answered: list[dict] = field(default_factory=list)  # task_id, run_id, subject, body, answer
    unexpected: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lines: _WaitingLines = field(default_factory=_WaitingLines)
    # ti id -> (lines counted, monotonic time) when first seen parked
    _parked: dict[str, tuple[int, float]] = field(default_factory=dict)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        if self.respond not in (None, APPROVE, REJECT, TIMEOUT):
            raise ValueError(f"respond must be {APPROVE!r}, {REJECT!r}, {TIMEOUT!r} or None, not {self.respond!r}")
        self._started = datetime.now(UTC)

    def __enter__(self) -> Responder:
        logger = logging.getLogger(DAG_TEST_LOGGER)
        self._level = logger.level
        if not logger.isEnabledFor(logging.INFO):
            logger.setLevel(logging.INFO)
        logger.addHandler(self._lines)
        self._thread = threading.Thread(target=self._run, name=f"respond-{self.dag_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        logger = logging.getLogger(DAG_TEST_LOGGER)
        logger.removeHandler(self._lines)
        logger.setLevel(self._level)

    def _parked_in_loop(self, ti_id: str) -> bool:
        """True once dag.test() said it waits, after ``ti_id`` was first seen parked."""
        lines, since = self._parked.setdefault(ti_id, (self._lines.count, time.monotonic()))
        if self._lines.count > lines:
            return True
        if time.monotonic() - since > NO_WAITING_LINE_AFTER:
            raise AssertionError(
                f"dag.test() never said {WAITING_FOR_INPUT!r} in {NO_WAITING_LINE_AFTER:g} s after a task was "
                f"parked: its line changed, so the responder cannot tell when answering is safe"
            )
        return False

    def _run(self) -> None:
        from sqlalchemy.exc import OperationalError

        done: set[str] = set()
        while not self._stop.wait(0.5):
            try:
                self._answer_waiting(done)
            except OperationalError:  # the sqlite metadata DB is busy with the run: try again
                continue
            except BaseException as exc:  # reported by run_dag, never swallowed
                self.error = exc
                self._fail_waiting()  # else dag.test() would wait for an answer that never comes
                return

    def _fail_waiting(self) -> None:
        from airflow.models.taskinstance import TaskInstance as TI
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import update

        with create_session() as session:
            session.execute(
                update(TI)
                .where(
                    TI.dag_id == self.dag_id,
                    TI.state == TaskInstanceState.AWAITING_INPUT,
                    TI.start_date >= self._started,
                )
                .values(state=TaskInstanceState.FAILED)
            )

    def _answer_waiting(self, done: set[str]) -> None:
        from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
        from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
        from airflow.models.hitl import HITLDetail
        from airflow.models.taskinstance import TaskInstance as TI
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import select

        with create_session() as session:
            waiting = session.scalars(
                select(TI).where(
                    TI.dag_id == self.dag_id,
                    TI.state == TaskInstanceState.AWAITING_INPUT,
                    TI.start_date >= self._started,
                )
            ).all()
            for ti in waiting:
                if str(ti.id) in done or not self._parked_in_loop(str(ti.id)):
                    continue
                detail = session.scalar(select(HITLDetail).where(HITLDetail.ti_id == ti.id))
                seen = {
                    "task_id": ti.task_id,
                    "run_id": ti.run_id,
                    "subject": detail.subject if detail else None,
                    "body": detail.body if detail else None,
                    "answer": self.respond,
                }
                if self.respond is None:
                    # nobody will answer: fail it now, run_dag then says why
                    self.unexpected.append(f"{ti.task_id} of {ti.run_id} waits for an approval ({seen['subject']})")
                    ti.state = TaskInstanceState.FAILED
                elif self.respond == TIMEOUT:
                    if ti.trigger_timeout is None or ti.trigger_timeout >= datetime.now(UTC):
                        continue
                    session.commit()
                    _timeout_sweep(session)
                else:
                    update_hitl_detail(
                        dag_id=ti.dag_id,
                        dag_run_id=ti.run_id,
                        task_id=ti.task_id,
                        update_hitl_detail_payload=UpdateHITLDetailPayload(
                            chosen_options=[self.respond], params_input={}
                        ),
                        user=ApprovingUser(),
                        session=session,
                        map_index=ti.map_index,
                    )
                done.add(str(ti.id))
                self.answered.append(seen)


def _timeout_sweep(session) -> None:
    """The scheduler's own AWAITING_INPUT timeout sweep, once."""
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

    SchedulerJobRunner(job=Job()).check_awaiting_input_timeouts(session=session)


def wait_for(predicate, timeout: float, what: str):
    """Poll ``predicate`` until it returns something truthy; AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
