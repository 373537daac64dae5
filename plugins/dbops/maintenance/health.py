"""The platform's alert rules (seeds: alert_rules.yml) as checks that fail loudly.

| rule | check |
|---|---|
| PostgreSQLHighConnections: ``sum(pg_stat_activity_count{datname="ai_platform"}) > 150`` | client connections to the platform database |
| RedisHighMemoryUsage: ``used / max * 100 > 80`` | ``INFO memory`` used_memory against maxmemory |
| MongoDBReplicationLag: secondary optime behind primary ``> 60`` s | ``replSetGetStatus`` (not applicable to a standalone server) |
| (Kafka topics of ``include/scripts/kafka_topics.json``) | every topic present with at least its partitions |

Each ``evaluate_*`` function is pure (measurements in, :class:`Check` out); the
``measure_*`` functions read a live store through a client handed in by the caller.
"""  # noqa: E501 - a Markdown table row is one line

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dbops.maintenance import render
from dbops.sqlfiles import load_sql


@dataclass
class Check:
    store: str
    rule: str
    ok: bool
    summary: str
    problems: list[str] = field(default_factory=list)
    measured: dict[str, Any] = field(default_factory=dict)
    applicable: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "rule": self.rule,
            "ok": self.ok,
            "applicable": self.applicable,
            "summary": self.summary,
            "problems": self.problems,
            "measured": self.measured,
        }


# ----------------------------------------------------------------------------- PostgreSQL


def evaluate_pg_connections(measured: dict[str, Any], database: str, threshold: int) -> Check:
    count = measured["database_connections"]
    summary = (
        f"{count} client connections to database {database} (threshold {threshold}; "
        f"server: {measured['server_connections']} of max_connections {measured['max_connections']}; "
        f"by state: {measured.get('by_state') or {}})"
    )
    problems = []
    if count > threshold:
        problems.append(
            f"PostgreSQL: {count} connections to database {database} exceed health.pg_max_connections = {threshold}"
        )
    return Check("postgres", "PostgreSQLHighConnections", not problems, summary, problems, measured)


def measure_pg_connections(conn) -> dict[str, Any]:
    with conn.cursor() as cur:
        cur.execute(load_sql("monitor/pg_connections.sql"))
        names = [c.name for c in cur.description]
        row = dict(zip(names, cur.fetchone(), strict=True))
    conn.rollback()
    return row


# ----------------------------------------------------------------------------- Redis


def evaluate_redis_memory(info: dict[str, Any], max_percent: float) -> Check:
    used, maxmemory = int(info["used_memory"]), int(info.get("maxmemory") or 0)
    measured = {"used_memory": used, "maxmemory": maxmemory, "maxmemory_policy": info.get("maxmemory_policy")}
    if maxmemory <= 0:
        problems = [
            f"Redis: maxmemory is 0 (unlimited): used memory {render.size(used)} cannot be judged "
            f"against health.redis_max_memory_percent = {max_percent:g} %; set maxmemory "
            "(the platform's redis.conf has 1gb, see dbops_bootstrap)"
        ]
        return Check("redis", "RedisHighMemoryUsage", False, "maxmemory not set", problems, measured)
    percent = 100.0 * used / maxmemory
    measured["used_percent"] = round(percent, 2)
    summary = (
        f"used {render.size(used)} of maxmemory {render.size(maxmemory)} = {percent:.1f} % "
        f"(threshold {max_percent:g} %)"
    )
    problems = []
    if percent > max_percent:
        problems.append(
            f"Redis: used memory {percent:.1f} % of maxmemory ({render.size(used)} of "
            f"{render.size(maxmemory)}) exceeds health.redis_max_memory_percent = {max_percent:g} %"
        )
    return Check("redis", "RedisHighMemoryUsage", not problems, summary, problems, measured)


def measure_redis_memory(client) -> dict[str, Any]:
    return client.info("memory")


# ----------------------------------------------------------------------------- MongoDB


def evaluate_mongo_lag(status: dict[str, Any] | None, max_lag_s: float) -> Check:
    """``status`` is the reply of replSetGetStatus, or None for a server without a replica set."""
    if status is None:
        return Check(
            "mongo",
            "MongoDBReplicationLag",
            True,
            "standalone server (no replica set): replication lag does not apply",
            applicable=False,
        )
    members = status.get("members", [])
    primary = next((m for m in members if m.get("stateStr") == "PRIMARY"), None)
    if primary is None:
        return Check(
            "mongo",
            "MongoDBReplicationLag",
            False,
            f"replica set {status.get('set')} has no primary",
            [f"MongoDB: replica set {status.get('set')} has no PRIMARY member"],
        )
    lags = {}
    for m in members:
        if m.get("stateStr") == "SECONDARY":
            lags[m["name"]] = _seconds(primary["optimeDate"]) - _seconds(m["optimeDate"])
    worst = max(lags.values(), default=0.0)
    summary = (
        f"replica set {status.get('set')}: {len(lags)} secondaries, worst lag {worst:.0f} s (threshold {max_lag_s:g} s)"
    )
    problems = [
        f"MongoDB: secondary {name} is {lag:.0f} s behind the primary {primary['name']}, more than "
        f"health.mongo_max_replication_lag_s = {max_lag_s:g} s"
        for name, lag in sorted(lags.items())
        if lag > max_lag_s
    ]
    return Check(
        "mongo", "MongoDBReplicationLag", not problems, summary, problems, {"set": status.get("set"), "lag_s": lags}
    )


def _seconds(value: datetime) -> float:
    return value.timestamp()


def measure_mongo_status(client) -> dict[str, Any] | None:
    """replSetGetStatus, or None when the server runs without a replica set."""
    from pymongo.errors import OperationFailure

    try:
        return client.admin.command("replSetGetStatus")
    except OperationFailure as exc:
        if exc.code == 76:  # NoReplicationEnabled: a standalone server
            return None
        raise


# ----------------------------------------------------------------------------- Kafka


def evaluate_kafka_topics(actual: dict[str, dict[str, Any]], spec_topics: list[dict[str, Any]]) -> Check:
    """Every specified topic present with at least its partition count."""
    problems, seen = [], {}
    for t in spec_topics:
        name, want = t["name"], int(t["partitions"])
        have = actual.get(name)
        if have is None:
            problems.append(f"Kafka: topic {name} is missing (expected {want} partitions)")
            continue
        seen[name] = have["partitions"]
        if have["partitions"] < want:
            problems.append(f"Kafka: topic {name} has {have['partitions']} partitions, expected {want}")
    summary = ", ".join(f"{n}: {p} partitions" for n, p in seen.items()) or "no platform topic found"
    return Check("kafka", "KafkaTopics", not problems, summary, problems, {"partitions": seen})
