"""The platform's alert rules as pure evaluations of measured values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dbops.maintenance import health


def pg(count):
    return {
        "database_connections": count,
        "server_connections": count + 2,
        "max_connections": 200,
        "by_state": {"idle": count},
    }


def test_pg_connections_over_the_threshold_fail_naming_it():
    assert health.evaluate_pg_connections(pg(150), "ai_platform", 150).ok
    check = health.evaluate_pg_connections(pg(151), "ai_platform", 150)
    assert not check.ok
    assert check.problems == [
        "PostgreSQL: 151 connections to database ai_platform exceed health.pg_max_connections = 150"
    ]


def test_redis_memory_percent_of_maxmemory():
    gib = 1024**3
    assert health.evaluate_redis_memory({"used_memory": int(0.8 * gib), "maxmemory": gib}, 80).ok
    check = health.evaluate_redis_memory({"used_memory": int(0.81 * gib), "maxmemory": gib}, 80)
    assert not check.ok and "81.0 % of maxmemory" in check.problems[0]
    assert "redis_max_memory_percent = 80" in check.problems[0]


def test_redis_without_maxmemory_cannot_pass():
    check = health.evaluate_redis_memory({"used_memory": 10, "maxmemory": 0}, 80)
    assert not check.ok and "maxmemory is 0" in check.problems[0]


def rs(*lags):
    t0 = datetime(2026, 11, 22, tzinfo=UTC)
    members = [{"name": "m0:27017", "stateStr": "PRIMARY", "optimeDate": t0}]
    members += [
        {"name": f"m{i + 1}:27017", "stateStr": "SECONDARY", "optimeDate": t0 - timedelta(seconds=lag)}
        for i, lag in enumerate(lags)
    ]
    return {"set": "rs0", "members": members}


def test_mongo_lag_per_secondary():
    assert health.evaluate_mongo_lag(rs(0, 60), 60).ok
    check = health.evaluate_mongo_lag(rs(5, 61), 60)
    assert not check.ok
    assert check.problems == [
        "MongoDB: secondary m2:27017 is 61 s behind the primary m0:27017, more than "
        "health.mongo_max_replication_lag_s = 60 s"
    ]


def test_mongo_standalone_is_not_applicable_and_a_set_without_primary_fails():
    assert not health.evaluate_mongo_lag(None, 60).applicable
    status = rs(1)
    status["members"][0]["stateStr"] = "RECOVERING"
    assert not health.evaluate_mongo_lag(status, 60).ok


def test_kafka_topics_present_with_their_partitions():
    spec = [
        {"name": "data-ingestion", "partitions": 3},
        {"name": "model-events", "partitions": 3},
        {"name": "system-logs", "partitions": 3},
    ]
    actual = {"data-ingestion": {"partitions": 3}, "model-events": {"partitions": 1}, "other": {"partitions": 1}}
    check = health.evaluate_kafka_topics(actual, spec)
    assert not check.ok
    assert check.problems == [
        "Kafka: topic model-events has 1 partitions, expected 3",
        "Kafka: topic system-logs is missing (expected 3 partitions)",
    ]
    actual.update({"model-events": {"partitions": 3}, "system-logs": {"partitions": 6}})
    assert health.evaluate_kafka_topics(actual, spec).ok
