"""Readers of the run-summary events that arrived in the local Kafka and Mongo."""

from __future__ import annotations

import json
import time
import uuid

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic

from tests.support import kafka_admin, mongo_client

TOPIC = "system-logs"
COLLECTION = "system_logs"


def ensure_topic(conn: dict, topic: str) -> str:
    """The topic (bootstrap creates the platform's topics; created here if missing)."""
    admin = kafka_admin(conn)
    if topic not in admin.list_topics(timeout=10).topics:
        futures = admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        try:
            futures[topic].result(timeout=30)
        except Exception as exc:  # created meanwhile by someone else
            if "already exists" not in str(exc).lower():
                raise
    return topic


def kafka_events(conn: dict, topic: str, run_id: str, timeout: float = 30) -> list[dict]:
    """Every summary event of ``run_id`` in ``topic``, read from the beginning (no group join).

    Returns as soon as the topic is read to its end after a match; waits ``timeout`` otherwise.
    """
    consumer = Consumer(
        {**conn["extra"], "group.id": f"dbops-test-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        found, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                if found:
                    return found
                continue
            if message.error():
                continue
            event = json.loads(message.value())
            if event.get("details", {}).get("run") == run_id:
                assert message.key().decode() == event["details"]["dag"], "events are keyed by DAG id"
                found.append(event)
        return found
    finally:
        consumer.close()


def mongo_events(conn: dict, run_id: str) -> list[dict]:
    """The ``system_logs`` documents of ``run_id`` in the platform database."""
    with mongo_client(conn) as client:
        return list(client[conn.get("schema") or "ai_platform"][COLLECTION].find({"details.run": run_id}))
