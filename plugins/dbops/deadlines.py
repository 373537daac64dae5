"""Deadline alerts (Airflow 3.3): a run not finished by a clock time alerts, even while it runs.

``schedules.nightly_deadline`` ("06:00", in ``schedules.timezone``; null: off) becomes an
Airflow ``DeadlineAlert`` of ``dbops_nightly_backup``: the reference is the run's logical date
(for a scheduled run, its cron fire time), the interval the time from the cron's fire time to
the next deadline clock time (02:00 -> 06:00: 4 hours). Not the time the run was queued:
Airflow 3.3.2 recomputes queued-at deadlines when a task is cleared and fails there (HTTP 500
on "Clear"), which would break the rerun of a failed nightly. A backfilled run, whose logical
date is in the past, is never alerted (its deadline passes at once; the callback skips it).

When the deadline passes and the run has not ended, the scheduler hands
:func:`deadline_missed` to the executor (a ``SyncCallback``, run like a task: Connections and
Variables through the API), which alerts through the channels of the run alerts
(``dbops.run_notifiers``): the ``DBOPS ALERT`` log line, e-mail (``notify.email_to``) and the
webhook (``notify.webhook``, connection ``connections.alerts``). A run that finishes in time
removes its deadline: no alert. Airflow 3.3.2 refuses executor callbacks the Connections and
Variables of its metadata database: the alert's connections must come from the environment
(``AIRFLOW_CONN_*``) or a secrets backend, its settings from the YAML file or ``DBOPS_*``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

# the clock format is checked with the config (the core), which must not import this module
from dbops.config import parse_clock

log = logging.getLogger(__name__)

OUTCOME = "deadline_missed"


def interval_to_clock(cron: str, clock: str, timezone: str, around: datetime | None = None) -> timedelta:
    """From a fire time of ``cron`` (the first at or after ``around``, default now) to the next
    ``clock`` time after it, on the wall clock of ``timezone``. A deadline equal to the fire
    time means the next day's (24 h)."""
    from croniter import croniter

    hour, minute = parse_clock(clock)
    zone = ZoneInfo(timezone)
    start = (around or datetime.now(zone)).astimezone(zone) - timedelta(seconds=1)
    fire = croniter(cron, start).get_next(datetime)
    due = fire.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if due <= fire:
        due = (fire + timedelta(days=1)).replace(hour=hour, minute=minute, second=0, microsecond=0)
    # wall-clock arithmetic in the zone (a DST change between fire and deadline counts)
    return due.astimezone(ZoneInfo("UTC")) - fire.astimezone(ZoneInfo("UTC"))


@dataclass(frozen=True)
class RunDeadline:
    """The clock time (``HH:MM`` in ``timezone``) a run of a cron-scheduled DAG must have finished by."""

    cron: str
    clock: str
    timezone: str

    def interval(self) -> timedelta:
        return interval_to_clock(self.cron, self.clock, self.timezone)

    def alert(self, schedule: Any = None):
        """The Airflow ``DeadlineAlert`` (``dbops_dag(deadline=...)`` calls this)."""
        # airflow.sdk exports these at run time; its __init__.pyi stub does not list them yet
        from airflow.sdk import DeadlineAlert, DeadlineReference, SyncCallback  # type: ignore[attr-defined]

        return DeadlineAlert(
            reference=DeadlineReference.DAGRUN_LOGICAL_DATE,
            interval=self.interval(),
            callback=SyncCallback(deadline_missed, kwargs={"clock": self.clock, "timezone": self.timezone}),
            name=f"finished by {self.clock} {self.timezone}",
        )


def nightly_deadline(schedules) -> RunDeadline | None:
    """The deadline of ``dbops_nightly_backup`` from ``schedules`` (None when not configured)."""
    if not schedules.nightly_deadline:
        return None
    return RunDeadline(schedules.nightly_backup, schedules.nightly_deadline, schedules.timezone)


def alert_payload(dag_run: dict[str, Any], clock: str, timezone: str, deadline_time: Any) -> dict[str, Any]:
    """The webhook JSON of a missed deadline (the keys of the run alerts, ``outcome`` ``deadline_missed``)."""
    dag_id, run_id = dag_run.get("dag_id"), dag_run.get("dag_run_id") or dag_run.get("run_id")
    state = dag_run.get("state")
    message = (
        f"{dag_id} run {run_id}: not finished by its deadline {clock} {timezone} (due {deadline_time}); it is {state}"
    )
    return {
        "source": "dbops",
        "dag_id": dag_id,
        "task_id": None,
        "run_id": run_id,
        "outcome": OUTCOME,
        "state": state,
        "deadline": str(deadline_time),
        "failed_tasks": [],
        "message": message,
    }


def send_email(config, payload: dict[str, Any]) -> None:
    """The alert by e-mail through the smtp provider (text escaped, never rendered as a template)."""
    import html

    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    from dbops import runtime

    conn_id, settings = config.connections.smtp, config.notify
    conn = runtime.optional(conn_id)
    if conn is None:
        raise ValueError(f"notify.email_to is set but there is no Airflow connection {conn_id!r}")
    sender = settings.email_from or (conn.extra_dejson or {}).get("from_email")
    if not sender:
        raise ValueError(f"no sender: set notify.email_from or from_email in the extra of connection {conn_id!r}")
    body = f"<p>{html.escape(payload['message'])}</p>".replace("{", "&#123;").replace("}", "&#125;")
    SmtpNotifier(
        to=settings.email_to,
        from_email=sender,
        subject=f"[dbops] {payload['dag_id']} late: run {payload['run_id']}",
        html_content=body,
        smtp_conn_id=conn_id,
    ).notify({})


def _callback_config():
    """The run-time config, or the parse-time one (YAML and ``DBOPS_*``) when the Execution API
    denies this callback the Variable: Airflow 3.3.2 gives executor callbacks no task token, so
    Variables and Connections kept in the metadata database are refused to them (those in the
    environment or a secrets backend are read)."""
    from dbops.runtime import base_config, runtime_config

    try:
        return runtime_config()
    except PermissionError as exc:  # AirflowSecretsBackendAccessDenied
        log.warning("the dbops_config Variable is not readable here (%s): using the YAML and DBOPS_* settings", exc)
        return base_config()


def deadline_missed(context: dict[str, Any], clock: str, timezone: str) -> None:
    """The deadline callback: alert through every configured channel (each failure logged,
    then raised, so Airflow marks the callback failed)."""
    from dbops import runtime
    from dbops.alerting import post_alert
    from dbops.run_notifiers import deliver

    dag_run = (context or {}).get("dag_run") or {}
    if dag_run.get("run_type") == "backfill":
        # a backfill's logical date is in the past: its deadline passed before it was queued
        log.info("no deadline alert for the backfilled run %s", dag_run.get("dag_run_id") or dag_run.get("run_id"))
        return
    config = _callback_config()
    settings = config.notify
    deadline = (context or {}).get("deadline") or {}
    payload = alert_payload(dag_run, clock, timezone, deadline.get("deadline_time"))
    log.error("DBOPS ALERT %s", payload["message"])
    channels = {}
    if settings.email_to:
        channels["e-mail"] = lambda: send_email(config, payload)
    if settings.webhook:
        conn_id = config.connections.alerts

        def webhook() -> None:
            if not runtime.connection_exists(conn_id):
                raise ValueError(f"notify.webhook is on but there is no Airflow connection {conn_id!r}")
            post_alert(conn_id, payload, settings.timeout_s)

        channels["webhook"] = webhook
    deliver(f"deadline alert for run {payload['run_id']} of {payload['dag_id']}", channels)
