"""Alerts of dbops checks: an Airflow notifier for ``on_failure_callback``.

A failed check task already shows its message in the UI and the task log; this
notifier makes it an alert: an ERROR line ``DBOPS ALERT ...`` in the task log (for log
based alerting) and, when the Airflow connection ``connections.alerts`` (default
``dbops_alerts``, an HTTP connection) exists, a JSON POST to it, e.g. an Alertmanager,
Slack or Teams webhook relay. Without that connection the alert stays in the log.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)


def webhook_url(conn) -> str:
    """``<schema or http>://host[:port]<extra.endpoint>`` of an HTTP connection."""
    scheme = conn.schema or "http"
    port = f":{conn.port}" if conn.port else ""
    endpoint = (conn.extra_dejson or {}).get("endpoint", "") if conn.extra else ""
    if endpoint and not endpoint.startswith("/"):
        endpoint = "/" + endpoint
    return f"{scheme}://{conn.host}{port}{endpoint}"


class DbopsAlert(BaseNotifier):
    """Log (and, when configured, POST) the failure of a dbops check task."""

    template_fields = ()

    def __init__(self, conn_id: str | None = None, timeout_s: float = 10.0):
        super().__init__()
        self.conn_id = conn_id
        self.timeout_s = timeout_s

    def payload(self, context: Any) -> dict[str, Any]:
        ti = context["ti"]
        exception = context.get("exception")
        return {
            "source": "dbops",
            "dag_id": ti.dag_id,
            "task_id": ti.task_id,
            "run_id": ti.run_id,
            "try_number": getattr(ti, "try_number", None),
            "message": str(exception) if exception is not None else "task failed",
        }

    def notify(self, context: Any) -> None:
        from dbops import runtime
        from dbops.runtime import runtime_config

        body = self.payload(context)
        log.error("DBOPS ALERT %s.%s (%s): %s", body["dag_id"], body["task_id"], body["run_id"], body["message"])
        conn_id = self.conn_id or runtime_config().connections.alerts
        if not runtime.connection_exists(conn_id):
            log.info("no Airflow connection %r: the alert is in this log only", conn_id)
            return
        post_alert(conn_id, body, self.timeout_s)


def post_alert(conn_id: str, body: dict[str, Any], timeout_s: float) -> None:
    """POST ``body`` as JSON to the HTTP connection ``conn_id`` (its password as a Bearer token)."""
    import requests

    from dbops import runtime

    conn = runtime.get_connection(conn_id)
    headers = {"Authorization": f"Bearer {conn.password}"} if conn.password else {}
    try:
        response = requests.post(webhook_url(conn), json=body, headers=headers, timeout=timeout_s)
        response.raise_for_status()
    except requests.RequestException as exc:
        # requests names the URL, and a webhook URL often holds its token: say only what failed
        status = f"HTTP {exc.response.status_code}" if exc.response is not None else type(exc).__name__
        raise RuntimeError(f"alert POST to connection {conn_id!r} failed: {status}") from None
    log.info("alert sent to connection %r (HTTP %s)", conn_id, response.status_code)
