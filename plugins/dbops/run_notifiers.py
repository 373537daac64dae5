"""The DAG-level callbacks of every dbops DAG: run alerts and run-summary events.

Where they run (Airflow 3.3): when a run ends, the scheduler sends a callback request to
the dag-processor, which parses the DAG file and calls the DAG's ``on_failure_callback``
or ``on_success_callback`` (``dag.test()`` calls them in its own process). The context
holds ``dag``, ``run_id`` and ``reason``, plus ``dag_run`` and ``ti`` when a task
instance ended the run. Like a task, the callback reads Connections, Variables, XCom
and the run's task states through the supervisor, never the metadata DB; per-task
durations are not available there, so the summary carries the run's duration and the
duration each task reports itself (a backup's ``seconds``).

Truthful by construction: the run's state is settled before these callbacks run, so
nothing here can turn a failed run into success or a successful backup into a failure.
A delivery that fails is logged as an ERROR ``DBOPS DELIVERY FAILED`` naming the
channel, the other channels are still tried, and then the callback raises: Airflow logs
"Callback failed" and counts it in its metric ``dag.callback_exceptions``.

What is sent is decided when the run ends, from the run-time config (``notify`` section,
with the ``dbops_config`` Variable applied): all off by default, except the ``DBOPS
ALERT`` log line of a failed run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import BaseNotifier

from dbops import events

log = logging.getLogger(__name__)


class DeliveryFailed(RuntimeError):
    """At least one channel did not take the alert or event (each failure was logged)."""


def _value(item: Any) -> Any:
    return getattr(item, "value", item)


def _read_tasks(dag, run_id: str, with_results: bool, problems: list[str]) -> list[events.TaskFacts]:
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance
    from airflow.sdk.execution_time.xcom import XCom

    states = RuntimeTaskInstance.get_task_states(dag_id=dag.dag_id, run_ids=[run_id]).get(run_id, {})
    tasks = []
    for key, state in sorted(states.items()):
        task_id, map_index = events.split_state_key(key, dag.task_ids)
        state = None if state is None else str(_value(state))
        result = None
        if with_results and state == "success":
            try:
                result = XCom.get_one(
                    key="return_value",
                    dag_id=dag.dag_id,
                    task_id=task_id,
                    run_id=run_id,
                    map_index=-1 if map_index is None else map_index,
                )
            except Exception as exc:  # one unreadable result must not cost the whole summary
                problems.append(f"result of {key}: {type(exc).__name__}")
                log.error("run %s of %s: the result of %s could not be read: %s", run_id, dag.dag_id, key, exc)
        tasks.append(events.TaskFacts(task_id=task_id, state=state, map_index=map_index, result=result))
    return tasks


def read_run(context: Any, outcome: str, *, with_results: bool) -> events.RunFacts:
    """The facts of the finished run of ``context`` that the callback can read."""
    dag, run_id = context["dag"], context["run_id"]
    dag_run = context.get("dag_run")
    problems: list[str] = []
    tasks: list[events.TaskFacts] = []
    try:
        tasks = _read_tasks(dag, run_id, with_results, problems)
    except Exception as exc:
        problems.append(f"task states: {type(exc).__name__}")
        log.error("run %s of %s: task states could not be read: %s", run_id, dag.dag_id, exc)
    if dag_run is None:
        problems.append("run times (no dag_run in the callback context)")
    return events.RunFacts(
        dag_id=dag.dag_id,
        run_id=run_id,
        outcome=outcome,
        run_type=None if dag_run is None else str(_value(dag_run.run_type)),
        logical_date=getattr(dag_run, "logical_date", None),
        started_at=getattr(dag_run, "start_date", None),
        ended_at=getattr(dag_run, "end_date", None),
        reason=context.get("reason"),
        tasks=tuple(tasks),
        problems=tuple(problems),
    )


def deliver(what: str, channels: dict[str, Callable[[], None]]) -> None:
    """Try every channel; log each failure loudly, then raise if any failed."""
    failed = []
    for name, send in channels.items():
        try:
            send()
        except Exception as exc:
            log.error("DBOPS DELIVERY FAILED: %s to %s: %s", what, name, exc)
            failed.append(name)
        else:
            log.info("%s sent to %s", what, name)
    if failed:
        raise DeliveryFailed(f"{what} was not delivered to {', '.join(failed)} (errors logged above)")


def send_email(smtp_conn_id: str, to: list[str], sender: str | None, facts: events.RunFacts, context: Any) -> None:
    """An e-mail through the smtp provider's notifier (its text is ours, never rendered as a template)."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    from dbops import runtime

    conn = runtime.optional(smtp_conn_id)
    if conn is None:
        raise ValueError(f"notify.email_to is set but there is no Airflow connection {smtp_conn_id!r}")
    sender = sender or (conn.extra_dejson or {}).get("from_email")
    if not sender:
        raise ValueError(f"no sender: set notify.email_from or from_email in the extra of connection {smtp_conn_id!r}")
    SmtpNotifier(
        to=to,
        from_email=sender,
        subject=events.alert_subject(facts),
        html_content=events.alert_html(facts),
        smtp_conn_id=smtp_conn_id,
    ).notify(context)


def send_webhook(conn_id: str, facts: events.RunFacts, timeout_s: float) -> None:
    from dbops import runtime
    from dbops.alerting import post_alert

    if not runtime.connection_exists(conn_id):
        raise ValueError(f"notify.webhook is on but there is no Airflow connection {conn_id!r}")
    post_alert(conn_id, events.webhook_payload(facts), timeout_s)


def publish_kafka(conn_id: str, topic: str, event: dict[str, Any], timeout_s: float) -> None:
    """Produce the event (key: the DAG id, so one DAG's events stay in order) and wait for the ack."""
    from airflow.providers.apache.kafka.hooks.produce import KafkaProducerHook

    producer = KafkaProducerHook(kafka_config_id=conn_id).get_producer()
    errors: list[Any] = []
    delivered: list[Any] = []

    def on_delivery(err, msg) -> None:
        (errors if err is not None else delivered).append(err or msg)

    try:
        producer.produce(
            topic,
            key=event["details"]["dag"].encode(),
            value=json.dumps(event, sort_keys=True).encode(),
            on_delivery=on_delivery,
        )
        pending = producer.flush(timeout_s)
    finally:
        producer.purge()  # nothing stays queued to be sent later, after the failure was reported
        del producer  # closes its broker connections now, even while an exception holds this frame
    if errors:
        raise RuntimeError(f"Kafka topic {topic!r} refused the event: {errors[0]}")
    if pending or not delivered:
        raise TimeoutError(f"Kafka topic {topic!r}: no acknowledgement within {timeout_s}s")


def publish_mongo(conn_id: str, database: str, collection: str, event: dict[str, Any]) -> None:
    """Upsert by event id: a repeated callback of the same run end does not add a second document."""
    from dbops import runtime

    document = events.mongo_document(event)
    with runtime.mongo(conn_id, database) as db:
        db[collection].replace_one({"_id": document["_id"]}, document, upsert=True)


class _RunNotifier(BaseNotifier):
    """A notifier for one run outcome; its texts are built from the run, not Jinja templates."""

    template_fields = ()

    def __init__(self, outcome: str):
        super().__init__()
        if outcome not in events.OUTCOMES:
            raise ValueError(f"outcome must be one of {list(events.OUTCOMES)}, got {outcome!r}")
        self.outcome = outcome

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        # Nothing to render; and dag.test() hands DAG callbacks a DAG without a template env.
        return None


class RunAlert(_RunNotifier):
    """``DBOPS ALERT`` in the log, then e-mail and webhook as configured, for the outcomes in ``notify.alert_on``."""

    def notify(self, context: Any) -> None:
        from dbops.runtime import runtime_config

        config = runtime_config()
        settings = config.notify
        if self.outcome not in settings.alert_on:
            return
        facts = read_run(context, self.outcome, with_results=True)
        (log.error if self.outcome == "failed" else log.info)("DBOPS ALERT %s", events.headline(facts))
        channels: dict[str, Callable[[], None]] = {}
        if settings.email_to:
            channels["e-mail"] = lambda: send_email(
                config.connections.smtp, settings.email_to, settings.email_from, facts, context
            )
        if settings.webhook:
            channels["webhook"] = lambda: send_webhook(config.connections.alerts, facts, settings.timeout_s)
        deliver(f"alert for run {facts.run_id} of {facts.dag_id}", channels)


class RunSummaryEvent(_RunNotifier):
    """The run-summary event to Kafka and/or Mongo when ``notify.kafka_events`` / ``mongo_events`` are on."""

    def notify(self, context: Any) -> None:
        from dbops.runtime import runtime_config

        config = runtime_config()
        settings = config.notify
        if not (settings.kafka_events or settings.mongo_events):
            return
        facts = read_run(context, self.outcome, with_results=True)
        event = events.run_event(facts, timestamp=datetime.now(UTC))
        channels: dict[str, Callable[[], None]] = {}
        if settings.kafka_events:
            channels[f"Kafka topic {settings.kafka_topic}"] = lambda: publish_kafka(
                config.connections.kafka, settings.kafka_topic, event, settings.timeout_s
            )
        if settings.mongo_events:
            channels[f"Mongo collection {settings.mongo_collection}"] = lambda: publish_mongo(
                config.connections.mongo, config.mongo.database, settings.mongo_collection, event
            )
        deliver(f"run summary {event['id']}", channels)


def run_callbacks() -> dict[str, list[BaseNotifier]]:
    """``on_success_callback`` / ``on_failure_callback`` of a dbops DAG."""
    return {
        "on_success_callback": [RunAlert("success"), RunSummaryEvent("success")],
        "on_failure_callback": [RunAlert("failed"), RunSummaryEvent("failed")],
    }
