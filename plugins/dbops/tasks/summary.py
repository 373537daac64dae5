"""The ``summary`` task every dbops DAG ends with: why the run did what it did, at a glance.

Its return value (XCom ``return_value`` of task ``summary``, shown in the task instance's
XCom tab) is a short multi-line text, also logged at the top level of its log (outside any
collapsed group). It is built from what the run's tasks said about themselves:

- a task that wants a line returns a dict with a ``"summary"`` string (mapped tasks: one
  line per map index), or pushes an XCom with the key ``"summary"`` (a ``plan`` that skips
  a run pushes its reason before skipping: a skipped task has no return value);
- tasks that failed or were held back by a failure are named.

``trigger_rule="all_done"``: it runs after every other task, also when some failed; it
never fails itself (the run's state is decided by the other tasks).
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import TriggerRule, get_current_context, task

log = logging.getLogger(__name__)

SUMMARY_KEY = "summary"
MAX_LINES = 25
MAX_LINE = 400  # characters: a line is a headline, the task's log holds the rest


def push_summary(text: str) -> None:
    """Give the running task a line in the run's summary, e.g. a reason before skipping."""
    get_current_context()["ti"].xcom_push(key=SUMMARY_KEY, value=text)


def summary_of(result: Any) -> str | None:
    """The ``"summary"`` string of a task's return value, or None."""
    if isinstance(result, dict) and isinstance(result.get(SUMMARY_KEY), str):
        return result[SUMMARY_KEY]
    return None


def _clip(text: str) -> str:
    text = " ".join(text.split())  # one line per entry; newlines inside would break the layout
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 3] + "..."


def compose(header: str, entries: list[tuple[str, str]], failed: list[str]) -> str:
    """The summary text: a header, ``task: line`` entries, the failed tasks; at most MAX_LINES."""
    lines = [header]
    lines += [f"{name}: {_clip(text)}" for name, text in entries]
    if failed:
        lines.append("failed: " + ", ".join(failed))
    if len(lines) > MAX_LINES:
        rest = len(lines) - (MAX_LINES - 1)
        lines = [*lines[: MAX_LINES - 1], f"... and {rest} more line(s): see the tasks' results"]
    return "\n".join(lines)


def _values(xcoms: Any) -> list[Any]:
    if xcoms is None:
        return []
    return list(xcoms)


def _task_states(dag_id: str, run_id: str) -> dict[str, str]:
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    states = RuntimeTaskInstance.get_task_states(dag_id=dag_id, run_ids=[run_id]).get(run_id, {})
    return {key: str(getattr(state, "value", state)) for key, state in states.items() if state is not None}


def read_entries(dag, run_id: str, exclude: str) -> list[tuple[str, str]]:
    """``(task, line)`` of every task of the run that said something, in the DAG's order."""
    from airflow.sdk.execution_time.xcom import XCom

    entries = []
    for task_id in dag.task_ids:
        if task_id == exclude:
            continue
        pushed = _values(XCom.get_all(key=SUMMARY_KEY, dag_id=dag.dag_id, task_id=task_id, run_id=run_id))
        returned = _values(XCom.get_all(key="return_value", dag_id=dag.dag_id, task_id=task_id, run_id=run_id))
        # a task returning a dict also has its "summary" item pushed under that key (multiple_outputs)
        lines = [p for p in pushed if isinstance(p, str)] + [s for s in map(summary_of, returned) if s]
        entries += [(task_id, line) for line in dict.fromkeys(lines)]
    return entries


def run_summary(context: Any) -> str:
    """The summary text of the run of ``context`` (read through the task's API channel)."""
    from dbops.events import FAILED_STATES, split_state_key

    dag, run_id = context["dag"], context["run_id"]
    me = context["ti"].task_id
    states = {}
    for key, state in _task_states(dag.dag_id, run_id).items():
        task_id, index = split_state_key(key, dag.task_ids)
        if task_id != me:
            states[task_id if index is None else f"{task_id}[{index}]"] = state
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    dag_run = context.get("dag_run")
    run_type = str(getattr(getattr(dag_run, "run_type", None), "value", getattr(dag_run, "run_type", "")) or "")
    tally = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no task ran"
    header = f"{dag.dag_id} {run_type + ' ' if run_type else ''}run {run_id}: {tally}"
    failed = sorted(k for k, v in states.items() if v in FAILED_STATES)
    return compose(header, read_entries(dag, run_id, exclude=me), failed)


def summary():
    """The DAG's final ``summary`` task, downstream of every task defined before it (call it
    last in the DAG file): it starts only when all of them are done."""

    @task(task_id="summary", trigger_rule="all_done")
    def summary_task() -> str:
        text = run_summary(get_current_context())
        log.info("run summary:\n%s", text)
        return text

    summary_task.__doc__ = "The run's summary: what each task did or why it skipped, and what failed."
    made = summary_task()
    final = made.operator  # type: ignore[attr-defined]  # a @task call gives a PlainXComArg
    # a teardown: the run's state stays that of its work (a summary's success never turns a
    # failed run green), and clearing a task clears the summary too, so it is written again
    final.as_teardown()
    final.trigger_rule = TriggerRule.ALL_DONE
    for other in final.dag.tasks:
        if other is not final:
            other >> final
    return made
