"""Run alerts and run-summary events of real DAG runs (``dag.test``), against the real
local Kafka (Tansu), Mongo (SecantusDB) and Redis, with a webhook and an SMTP server
started by the test on 127.0.0.1.

``dag.test()`` calls the DAG-level callbacks in its own process when the run ends, as the
dag-processor does in a deployment; the dag-processor gives them a supervisor channel
(Variables, Connections, XCom, task states) and ``dag.test()`` does not, so the runs here
provide the same channel in process (:func:`run_with_callback_channel`).
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dbops.backup.repository import BackupRepository
from tests.conftest import run_dag, without_retries
from tests.events_support import TOPIC, ensure_topic, kafka_events, mongo_events

pytestmark = pytest.mark.integration


def run_with_callback_channel(dag, conf: dict):
    """``dag.test()`` whose DAG callbacks reach Variables, XCom and task states through an
    in-process supervisor, as they do in the dag-processor."""
    import os

    import psutil
    import structlog
    from airflow.sdk.execution_time.supervisor import (
        InProcessSupervisorComms,
        InProcessTestSupervisor,
        set_supervisor_comms,
    )
    from uuid6 import uuid7

    supervisor = InProcessTestSupervisor(
        id=uuid7(),
        pid=os.getpid(),
        process=psutil.Process(),
        process_log=structlog.get_logger(logger_name="callbacks"),
        client=InProcessTestSupervisor._api_client(dag),
    )
    supervisor.comms = InProcessSupervisorComms(supervisor=supervisor)
    with set_supervisor_comms(supervisor.comms):
        return run_dag(dag, conf)


# --- local receivers -----------------------------------------------------------------------


class _Webhook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class _SmtpSink(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) to take one mail: EHLO, MAIL, RCPT, DATA, QUIT."""

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self):
        mail = {"rcpt": [], "data": ""}
        self.reply("220 sink ESMTP")
        while line := self.rfile.readline():
            command = line.decode().strip()
            verb = command.split(" ")[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 sink")
            elif verb == "MAIL":
                mail["from"] = command
                self.reply("250 OK")
            elif verb == "RCPT":
                mail["rcpt"].append(command)
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 end with <CRLF>.<CRLF>")
                lines = []
                while (data := self.rfile.readline()) not in (b".\r\n", b""):
                    lines.append(data.decode())
                mail["data"] = "".join(lines)
                self.server.mails.append(dict(mail))
                self.reply("250 OK queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 OK")


@pytest.fixture
def smtp_sink():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpSink)
    server.daemon_threads = True
    server.mails = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def system_logs_topic(devstack):
    return ensure_topic(devstack.conn("dbops_kafka"), TOPIC)


# --- the tests ---------------------------------------------------------------------------------


def test_a_successful_backup_run_publishes_its_summary_to_kafka_and_mongo(
    dagbag, dbops_variable, backup_root, devstack, system_logs_topic
):
    dbops_variable({"backup": {"root": str(backup_root)}, "notify": {"kafka_events": True, "mongo_events": True}})
    dag = dagbag.get_dag("dbops_nightly_backup")
    started = time.monotonic()
    run = run_with_callback_channel(dag, {"stores": ["redis"]})
    run_seconds = time.monotonic() - started
    assert run.state == "success"

    backup = BackupRepository(backup_root).list("redis")[0]
    in_kafka = kafka_events(devstack.conn("dbops_kafka"), system_logs_topic, run.run_id)
    in_mongo = mongo_events(devstack.conn("dbops_mongo"), run.run_id)
    assert len(in_kafka) == 1, in_kafka
    assert len(in_mongo) == 1, in_mongo
    event, document = in_kafka[0], in_mongo[0]

    details = event["details"]
    assert details["dag"] == "dbops_nightly_backup" and details["run"] == run.run_id
    assert details["outcome"] == "success" and event["level"] == "INFO" and event["service"] == "dbops"
    assert details["stores"] == ["redis"]
    assert details["backups"] == [
        {
            "task": "backup_redis",
            "store": "redis",
            "subject": None,
            "backup_id": backup.backup_id,
            "total_bytes": backup.total_bytes,
            "seconds": details["backups"][0]["seconds"],
            "reused": False,
            "compression": backup.manifest.get("compression", ""),
        }
    ]
    assert details["total_bytes"] == backup.total_bytes > 0
    assert 0 < details["backups"][0]["seconds"] < run_seconds
    assert 0 < details["duration_s"] <= run_seconds + 1
    states = {t["task"]: t["state"] for t in details["tasks"]}
    assert states["backup_redis"] == "success" and states["retention_redis"] == "success"
    assert states["backup_mongo"] == "skipped" and details["failed_tasks"] == []
    assert "problems" not in details, details.get("problems")

    assert document["_id"] == event["id"]
    assert document["details"] == details
    assert document["level"] == "INFO" and document["service"] == "dbops"
    assert abs(document["timestamp"].timestamp() - time.time()) < 600  # a BSON date, not a string


def test_a_failed_run_alerts_by_webhook_and_email_and_reports_failed(
    dagbag, dbops_variable, backup_root, devstack, system_logs_topic, webhook, smtp_sink, monkeypatch
):
    redis = devstack.conn("dbops_redis")
    monkeypatch.setenv("AIRFLOW_CONN_DBOPS_REDIS", json.dumps({**redis, "port": _closed_port()}))
    monkeypatch.setenv(
        "AIRFLOW_CONN_DBOPS_ALERTS",
        json.dumps(
            {
                "conn_type": "http",
                "host": "127.0.0.1",
                "port": webhook.server_port,
                "password": "alert-token",
                "extra": {"endpoint": "/hooks/dbops"},
            }
        ),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_DBOPS_SMTP",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": smtp_sink.server_address[1],
                "extra": {
                    "disable_tls": True,
                    "disable_ssl": True,
                    "from_email": "dbops@example.com",
                    "timeout": 5,
                    "retry_limit": 0,
                },
            }
        ),
    )
    dbops_variable(
        {
            "backup": {"root": str(backup_root)},
            "notify": {"kafka_events": True, "mongo_events": True, "webhook": True, "email_to": ["dba@example.com"]},
        }
    )
    dag = without_retries(dagbag.get_dag("dbops_nightly_backup"))
    run = run_with_callback_channel(dag, {"stores": ["redis"]})
    assert run.state == "failed"
    assert BackupRepository(backup_root).list("redis") == []

    # the webhook: one POST naming the run and the failed task, with the connection's token
    assert len(webhook.received) == 1, webhook.received
    post = webhook.received[0]
    assert post["path"] == "/hooks/dbops"
    assert post["headers"]["Authorization"] == "Bearer alert-token"
    assert post["body"]["dag_id"] == "dbops_nightly_backup" and post["body"]["run_id"] == run.run_id
    assert post["body"]["outcome"] == "failed"
    assert post["body"]["failed_tasks"] == ["backup_redis", "retention_redis"]

    # the e-mail: to the configured recipient, naming DAG, run and failed task; no secret in it
    assert len(smtp_sink.mails) == 1, smtp_sink.mails
    mail = smtp_sink.mails[0]
    assert "dba@example.com" in mail["rcpt"][0] and "dbops@example.com" in mail["from"]
    import email

    message = email.message_from_string(mail["data"])
    assert message["Subject"] == f"[dbops] dbops_nightly_backup failed: run {run.run_id}"
    body = message.get_payload(0).get_payload(decode=True).decode()
    assert "backup_redis" in body and run.run_id in body
    assert redis["password"] not in mail["data"] and "alert-token" not in mail["data"]

    # the events: outcome failed, no backup, the failed tasks named
    for event in kafka_events(devstack.conn("dbops_kafka"), system_logs_topic, run.run_id) + [
        {"details": d["details"], "level": d["level"]} for d in mongo_events(devstack.conn("dbops_mongo"), run.run_id)
    ]:
        assert event["level"] == "ERROR"
        assert event["details"]["outcome"] == "failed"
        assert event["details"]["backups"] == [] and event["details"]["total_bytes"] == 0
        assert event["details"]["failed_tasks"] == ["backup_redis", "retention_redis"]
    assert len(kafka_events(devstack.conn("dbops_kafka"), system_logs_topic, run.run_id, timeout=5)) == 1
    assert len(mongo_events(devstack.conn("dbops_mongo"), run.run_id)) == 1


def test_by_default_nothing_is_sent(
    dagbag, dbops_variable, backup_root, devstack, system_logs_topic, webhook, monkeypatch
):
    monkeypatch.setenv(
        "AIRFLOW_CONN_DBOPS_ALERTS", json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": webhook.server_port})
    )
    dbops_variable({"backup": {"root": str(backup_root)}})
    run = run_with_callback_channel(dagbag.get_dag("dbops_nightly_backup"), {"stores": ["redis"]})
    assert run.state == "success"
    assert webhook.received == []
    assert kafka_events(devstack.conn("dbops_kafka"), system_logs_topic, run.run_id, timeout=5) == []
    assert mongo_events(devstack.conn("dbops_mongo"), run.run_id) == []


def test_a_failed_delivery_is_logged_and_changes_no_run_state(
    dagbag, dbops_variable, backup_root, devstack, caplog, capfd, monkeypatch
):
    # Kafka events on, but the broker is unreachable; Mongo events still arrive.
    monkeypatch.setenv(
        "AIRFLOW_CONN_DBOPS_KAFKA",
        json.dumps({"conn_type": "kafka", "extra": {"bootstrap.servers": f"127.0.0.1:{_closed_port()}"}}),
    )
    dbops_variable(
        {"backup": {"root": str(backup_root)}, "notify": {"kafka_events": True, "mongo_events": True, "timeout_s": 3}}
    )
    run = run_with_callback_channel(dagbag.get_dag("dbops_nightly_backup"), {"stores": ["redis"]})
    assert run.state == "success"  # the backup succeeded; the lost event does not make it a failure
    assert BackupRepository(backup_root).list("redis")
    failures = [r for r in caplog.records if "DBOPS DELIVERY FAILED" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelname == "ERROR"
    assert "Kafka topic system-logs" in failures[0].getMessage()
    # the callback raised after trying every channel: Airflow logs it (and counts dag.callback_exceptions)
    captured = capfd.readouterr()
    assert "Callback failed for dbops_nightly_backup" in captured.out + captured.err
    assert len(mongo_events(devstack.conn("dbops_mongo"), run.run_id)) == 1
