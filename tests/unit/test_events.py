"""The run summary (pure): event fields, backups from task results, alert texts, and the
``notify`` settings refusing bad values by name."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from dbops import events
from dbops.config import ConfigError, DbopsConfig, load_config
from dbops.events import RunFacts, TaskFacts

T0 = datetime(2026, 11, 22, 2, 0, 1, tzinfo=UTC)

REDIS_RESULT = {
    "store": "redis",
    "subject": None,
    "backup_id": "20261122T020003Z",
    "path": "/backups/redis/20261122T020003Z",
    "total_bytes": 123_456,
    "seconds": 1.25,
    "reused": False,
    "compression": "none",
    "summary": "redis: ...",
}
PG_RESULT = {
    "store": "postgres",
    "subject": "ai_platform",
    "backup_id": "20261122T020002Z",
    "path": "/x",
    "total_bytes": 2_000_000,
    "seconds": 7.5,
    "reused": False,
    "compression": "gzip",
    "summary": "...",
}


def _facts(**changes) -> RunFacts:
    values = dict(
        dag_id="dbops_nightly_backup",
        run_id="scheduled__2026-11-22T02:00:00+00:00",
        outcome="success",
        run_type="scheduled",
        logical_date=T0 - timedelta(seconds=1),
        started_at=T0,
        ended_at=T0 + timedelta(seconds=42.5),
        reason="success",
        tasks=(
            TaskFacts("plan", "success", result={"stores": ["redis"], "root": "/backups"}),
            TaskFacts("backup_postgres", "success", map_index=0, result=PG_RESULT),
            TaskFacts("backup_redis", "success", result=REDIS_RESULT),
            TaskFacts("backup_weaviate", "skipped"),
            TaskFacts("retention_redis", "success", result={"store": "redis", "series": []}),
        ),
    )
    values.update(changes)
    return RunFacts(**values)


def test_event_carries_dag_run_outcome_stores_sizes_and_durations():
    event = events.run_event(_facts(), timestamp=T0 + timedelta(minutes=1))
    details = event["details"]
    assert details["dag"] == "dbops_nightly_backup"
    assert details["run"] == "scheduled__2026-11-22T02:00:00+00:00"
    assert details["outcome"] == "success" and event["level"] == "INFO"
    assert details["stores"] == ["postgres", "redis"]
    assert details["total_bytes"] == 2_123_456
    assert details["duration_s"] == 42.5
    assert details["started_at"] == "2026-11-22T02:00:01Z" and details["ended_at"] == "2026-11-22T02:00:43.500000Z"
    assert details["logical_date"] == "2026-11-22T02:00:00Z"
    assert [(b["task"], b["store"], b["backup_id"], b["total_bytes"], b["seconds"]) for b in details["backups"]] == [
        ("backup_postgres[0]", "postgres", "20261122T020002Z", 2_000_000, 7.5),
        ("backup_redis", "redis", "20261122T020003Z", 123_456, 1.25),
    ]
    assert details["task_states"] == {"skipped": 1, "success": 4}
    assert {t["task"]: t["seconds"] for t in details["tasks"]}["backup_redis"] == 1.25
    assert details["failed_tasks"] == [] and "problems" not in details
    assert event["service"] == "dbops" and event["event"] == "dag_run_summary"
    assert event["timestamp"] == "2026-11-22T02:01:01Z"
    assert "2 backups" in event["message"] and "2.0 MiB" in event["message"]
    json.dumps(event)  # JSON-ready as it is


def test_event_keeps_only_listed_backup_fields():
    leaky = {**REDIS_RESULT, "password": "hunter2", "extra": {"token": "t"}}
    event = events.run_event(_facts(tasks=(TaskFacts("backup_redis", "success", result=leaky),)), timestamp=T0)
    assert "hunter2" not in json.dumps(event) and "token" not in json.dumps(event)
    assert "path" not in event["details"]["backups"][0]  # the server's folders stay out of the event


def test_failed_run_names_failed_tasks_and_is_an_error():
    facts = _facts(
        outcome="failed",
        reason="task_failure",
        tasks=(
            TaskFacts("plan", "success"),
            TaskFacts("backup_redis", "failed"),
            TaskFacts("retention_redis", "upstream_failed"),
            TaskFacts("backup_postgres", "failed", map_index=3),
        ),
    )
    event = events.run_event(facts, timestamp=T0)
    assert event["level"] == "ERROR" and event["details"]["outcome"] == "failed"
    assert event["details"]["failed_tasks"] == ["backup_redis", "retention_redis", "backup_postgres[3]"]
    assert event["details"]["total_bytes"] == 0 and event["details"]["stores"] == []
    assert "failed: backup_redis, retention_redis, backup_postgres[3]" in event["message"]


def test_unknown_times_and_unread_tasks_are_said_not_invented():
    facts = _facts(started_at=None, ended_at=None, tasks=(), problems=("task states: ConnectionError",))
    event = events.run_event(facts, timestamp=T0)
    assert event["details"]["duration_s"] is None and event["details"]["ended_at"] is None
    assert event["details"]["problems"] == ["task states: ConnectionError"]
    assert event["id"].endswith(":2026-11-22T02:00:01Z")  # falls back to when it was reported


def test_event_id_is_stable_for_one_run_end():
    facts = _facts()
    first = events.run_event(facts, timestamp=T0 + timedelta(minutes=1))
    again = events.run_event(facts, timestamp=T0 + timedelta(minutes=5))
    expected = "dbops_nightly_backup:scheduled__2026-11-22T02:00:00+00:00:success:2026-11-22T02:00:43.500000Z"
    assert first["id"] == again["id"] == expected
    rerun = events.run_event(_facts(ended_at=T0 + timedelta(hours=1)), timestamp=T0)
    assert rerun["id"] != first["id"]


def test_mongo_document_has_the_event_id_and_a_date():
    event = events.run_event(_facts(), timestamp=T0)
    document = events.mongo_document(event)
    assert document["_id"] == event["id"] and "id" not in document
    assert document["timestamp"] == T0
    assert document["details"] == event["details"]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("backup_redis", ("backup_redis", None)),
        ("backup_postgres_0", ("backup_postgres", 0)),
        ("backup_postgres_12", ("backup_postgres", 12)),
        ("backup_postgres_globals", ("backup_postgres_globals", None)),
        ("gone_task", ("gone_task", None)),
    ],
)
def test_split_state_key(key, expected):
    task_ids = ["backup_redis", "backup_postgres", "backup_postgres_globals"]
    assert events.split_state_key(key, task_ids) == expected


def test_backup_of_recognises_only_backup_results():
    assert events.backup_of(REDIS_RESULT)["backup_id"] == "20261122T020003Z"
    assert events.backup_of({"store": "redis", "series": []}) is None
    assert events.backup_of(["not", "a", "dict"]) is None
    assert events.backup_of(None) is None


def test_alert_texts_name_dag_and_run_and_escape_what_came_from_the_run():
    facts = _facts(outcome="failed", reason="<b>{{ conf.secret }}</b>", tasks=(TaskFacts("backup_redis", "failed"),))
    subject = events.alert_subject(facts)
    assert subject == "[dbops] dbops_nightly_backup failed: run scheduled__2026-11-22T02:00:00+00:00"
    body = events.alert_html(facts)
    assert "dbops_nightly_backup" in body and "backup_redis" in body
    assert "<b>" not in body and "{{" not in body
    payload = events.webhook_payload(facts)
    assert payload["outcome"] == "failed" and payload["failed_tasks"] == ["backup_redis"]
    assert payload["source"] == "dbops" and payload["dag_id"] == "dbops_nightly_backup"


def test_bad_facts_are_refused():
    with pytest.raises(ValueError, match="outcome"):
        _facts(outcome="ok")
    with pytest.raises(ValueError, match="dag_id and a run_id"):
        _facts(run_id="")
    with pytest.raises(ValueError, match="naive"):
        events.run_event(_facts(started_at=datetime(2026, 1, 1)), timestamp=T0)


# --- the notify settings ---------------------------------------------------------------


def test_notify_is_off_by_default():
    notify = DbopsConfig().notify
    assert notify.alert_on == ["failed"]
    assert notify.email_to == [] and notify.webhook is False
    assert notify.kafka_events is False and notify.mongo_events is False
    assert notify.kafka_topic == "system-logs" and notify.mongo_collection == "system_logs"


def test_notify_from_environment():
    config = load_config(
        environ={
            "DBOPS_NOTIFY__KAFKA_EVENTS": "true",
            "DBOPS_NOTIFY__EMAIL_TO": '["dba@example.com"]',
            "DBOPS_NOTIFY__ALERT_ON": '["failed", "success"]',
        }
    )
    assert config.notify.kafka_events is True
    assert config.notify.email_to == ["dba@example.com"]
    assert config.notify.alert_on == ["failed", "success"]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"alert_on": ["failure"]}, "notify.alert_on"),
        ({"alert_on": ["failed", "failed"]}, "notify.alert_on"),
        ({"email_to": ["not-an-address"]}, "notify.email_to"),
        ({"email_to": "dba@example.com"}, "notify.email_to"),  # a list, not a string
        ({"email_from": "me"}, "notify.email_from"),
        ({"webhook": "maybe"}, "notify.webhook"),
        ({"kafka_topic": "system logs"}, "notify.kafka_topic"),
        ({"kafka_topic": ""}, "notify.kafka_topic"),
        ({"mongo_collection": "system.profile"}, "notify.mongo_collection"),
        ({"mongo_collection": "logs$x"}, "notify.mongo_collection"),
        ({"timeout_s": 0}, "notify.timeout_s"),
        ({"kafka_event": True}, "notify.kafka_event"),
    ],
)
def test_bad_notify_values_are_refused_naming_the_key(override, named):
    with pytest.raises(ConfigError) as err:
        DbopsConfig().with_overrides({"notify": override})
    assert named in str(err.value)
