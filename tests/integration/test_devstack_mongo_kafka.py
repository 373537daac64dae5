"""The devstack's MongoDB (SecantusDB + the real mongodump/mongorestore under wine) and
Kafka (Tansu), exercised with real round trips through the same clients production uses.

Every test works in its own uniquely named database / topic / group and removes it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support import kafka_admin, mongo_client

pytestmark = pytest.mark.integration

TOOL_TIMEOUT = 120


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- MongoDB


@pytest.fixture
def mongo_conn(devstack) -> dict:
    return devstack.conn("dbops_mongo")


@pytest.fixture
def mongo(mongo_conn):
    client = mongo_client(mongo_conn)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def scratch_dbs(mongo):
    """Names of databases this test may create; every one is dropped afterwards."""
    names: list[str] = []

    def make() -> str:
        names.append(_unique("dbops_test"))
        return names[-1]

    yield make
    for name in names:
        mongo.drop_database(name)


def _ttl_indexes(collection) -> dict[str, tuple]:
    return {
        ix["name"]: (tuple(ix["key"].items()), ix["expireAfterSeconds"])
        for ix in collection.list_indexes()
        if "expireAfterSeconds" in ix
    }


def test_mongo_connection_works_with_the_provider_hook(mongo_conn, monkeypatch):
    from airflow.providers.mongo.hooks.mongo import MongoHook

    assert mongo_conn["conn_type"] == "mongo"
    assert mongo_conn["port"] == 57017 and mongo_conn["schema"] == "ai_platform"
    monkeypatch.setenv("AIRFLOW_CONN_DBOPS_MONGO", json.dumps(mongo_conn))
    with MongoHook(mongo_conn_id="dbops_mongo") as hook:
        client = hook.get_conn()
        assert client.admin.command("ping")["ok"] == 1
        status = client.admin.command("connectionStatus")["authInfo"]
        assert {"user": mongo_conn["login"], "db": "admin"} in status["authenticatedUsers"]
        assert hook.get_collection("any").database.name == "ai_platform"


def test_mongo_is_a_one_member_replica_set_with_an_oplog(mongo_conn, monkeypatch):
    """Started without --standalone: "secantus", PRIMARY, local.oplog.rs; the published
    connection reaches it directly (directConnection), through the provider's hook too."""
    from airflow.providers.mongo.hooks.mongo import MongoHook

    assert mongo_conn["extra"]["directConnection"] is True
    monkeypatch.setenv("AIRFLOW_CONN_DBOPS_MONGO", json.dumps(mongo_conn))
    with MongoHook(mongo_conn_id="dbops_mongo") as hook:
        client = hook.get_conn()
        hello = client.admin.command("hello")
        assert hello["setName"] == "secantus" and hello["isWritablePrimary"] is True
        members = client.admin.command("replSetGetStatus")["members"]
        assert [m["stateStr"] for m in members] == ["PRIMARY"]
        assert client.local.oplog.rs.find_one() is not None
        # what a single-database point-in-time restore would need and this server lacks
        with pytest.raises(Exception, match="applyOps"):
            client.admin.command("applyOps", [])


def test_mongo_requires_authentication(mongo_conn, scratch_dbs):
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure

    anonymous = MongoClient(host=mongo_conn["host"], port=mongo_conn["port"], serverSelectionTimeoutMS=5000)
    wrong = MongoClient(
        host=mongo_conn["host"],
        port=mongo_conn["port"],
        username=mongo_conn["login"],
        password="not-the-password",
        authSource="admin",
        serverSelectionTimeoutMS=5000,
    )
    try:
        with pytest.raises(OperationFailure) as denied:
            anonymous[scratch_dbs()].probe.insert_one({"x": 1})
        assert denied.value.code == 13  # Unauthorized
        with pytest.raises(OperationFailure) as failed:
            wrong.admin.command("ping")
        assert failed.value.code == 18  # AuthenticationFailed
    finally:
        anonymous.close()
        wrong.close()


def test_mongo_insert_find_and_ttl_index(mongo, scratch_dbs):
    coll = mongo[scratch_dbs()]["events"]
    now = datetime.now(UTC)
    coll.insert_many([{"seq": i, "kind": "even" if i % 2 == 0 else "odd", "at": now} for i in range(20)])

    odd = list(coll.find({"kind": "odd"}, {"_id": 0, "seq": 1}).sort("seq", -1))
    assert [d["seq"] for d in odd] == list(range(19, 0, -2))
    assert coll.count_documents({"seq": {"$gte": 15}}) == 5

    name = coll.create_index("at", expireAfterSeconds=3600, name="at_ttl")
    assert name == "at_ttl"
    assert _ttl_indexes(coll) == {"at_ttl": ((("at", 1),), 3600)}


# The production way of passing the password to the tools: a YAML file, never argv.
def _tool_credentials(conn: dict, tmp_path: Path, password: str | None = None) -> list[str]:
    config = tmp_path / f"mongo-tools-{uuid.uuid4().hex[:6]}.yaml"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"password: {json.dumps(password or conn['password'])}\n")
    uri = f"mongodb://{conn['login']}@{conn['host']}:{conn['port']}/?authSource=admin"
    return ["--uri", uri, f"--config={config}"]


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, timeout=TOOL_TIMEOUT, **kwargs)


def _seed_dump_source(mongo, db_name: str, count: int) -> None:
    coll = mongo[db_name]["events"]
    now = datetime.now(UTC)
    coll.insert_many([{"_id": i, "seq": i, "payload": "x" * (i % 7), "at": now} for i in range(count)])
    coll.create_index("at", expireAfterSeconds=86400, name="at_ttl")
    coll.create_index("seq", unique=True, name="seq_unique")
    mongo[db_name]["other"].insert_one({"_id": "only"})


def _assert_restored(mongo, source: str, target: str, count: int) -> None:
    src, dst = mongo[source]["events"], mongo[target]["events"]
    assert dst.count_documents({}) == src.count_documents({}) == count
    assert list(dst.find().sort("_id", 1)) == list(src.find().sort("_id", 1))
    assert _ttl_indexes(dst) == _ttl_indexes(src) == {"at_ttl": ((("at", 1),), 86400)}
    unique = {ix["name"]: ix.get("unique") for ix in dst.list_indexes()}
    assert unique.get("seq_unique") is True
    assert mongo[target]["other"].count_documents({}) == 1


def test_mongo_tools_are_on_path():
    for tool in ("mongodump", "mongorestore"):
        path = shutil.which(tool)
        assert path, f"{tool} not on PATH"
        result = _run([tool, "--version"])
        assert result.returncode == 0, result.stderr
        assert f"{tool} version: 100." in result.stdout.decode()


def test_mongodump_archive_gzip_then_mongorestore_into_another_namespace(mongo_conn, mongo, scratch_dbs, tmp_path):
    source, target = scratch_dbs(), scratch_dbs()
    _seed_dump_source(mongo, source, count=250)
    archive = tmp_path / "dump.archive.gz"
    creds = _tool_credentials(mongo_conn, tmp_path)

    dump = _run(["mongodump", *creds, "--db", source, f"--archive={archive}", "--gzip"])
    assert dump.returncode == 0, dump.stderr.decode()
    assert archive.read_bytes()[:2] == b"\x1f\x8b"  # the whole archive is gzip
    assert b"done dumping" in dump.stderr

    restore = _run(
        [
            "mongorestore",
            *creds,
            f"--archive={archive}",
            "--gzip",
            "--nsFrom",
            f"{source}.*",
            "--nsTo",
            f"{target}.*",
        ]
    )
    assert restore.returncode == 0, restore.stderr.decode()
    assert b"251 document(s) restored successfully" in restore.stderr
    _assert_restored(mongo, source, target, count=250)


def test_mongodump_archive_to_stdout_restores_from_stdin(mongo_conn, mongo, scratch_dbs, tmp_path):
    source, target = scratch_dbs(), scratch_dbs()
    _seed_dump_source(mongo, source, count=40)
    creds = _tool_credentials(mongo_conn, tmp_path)

    dump = _run(["mongodump", *creds, "--db", source, "--archive", "--gzip"])
    assert dump.returncode == 0, dump.stderr.decode()
    assert dump.stdout[:2] == b"\x1f\x8b" and len(dump.stdout) > 100

    restore = _run(
        ["mongorestore", *creds, "--archive", "--gzip", "--nsFrom", f"{source}.*", "--nsTo", f"{target}.*"],
        input=dump.stdout,
    )
    assert restore.returncode == 0, restore.stderr.decode()
    _assert_restored(mongo, source, target, count=40)


def test_mongodump_failures_are_reported(mongo_conn, scratch_dbs, tmp_path):
    bad = _run(
        [
            "mongodump",
            *_tool_credentials(mongo_conn, tmp_path, password="wrong"),
            "--db",
            scratch_dbs(),
            f"--archive={tmp_path / 'never.gz'}",
        ]
    )
    assert bad.returncode != 0
    assert b"AuthenticationFailed" in bad.stderr or b"authentication failed" in bad.stderr.lower()
    unknown = _run(["mongorestore", "--no-such-flag"])
    assert unknown.returncode != 0 and b"unknown option" in unknown.stderr


# --------------------------------------------------------------------------- Kafka


@pytest.fixture
def kafka_conn(devstack) -> dict:
    return devstack.conn("dbops_kafka")


def test_kafka_connection_works_with_the_provider_hook(kafka_conn, monkeypatch):
    from airflow.providers.apache.kafka.hooks.client import KafkaAdminClientHook

    assert kafka_conn["conn_type"] == "kafka"
    assert kafka_conn["extra"]["bootstrap.servers"] == "127.0.0.1:59092"
    monkeypatch.setenv("AIRFLOW_CONN_DBOPS_KAFKA", json.dumps(kafka_conn))
    ok, message = KafkaAdminClientHook(kafka_config_id="dbops_kafka").test_connection()
    assert ok, message


def _wait(futures: dict, timeout: float = 30) -> None:
    for future in futures.values():
        future.result(timeout=timeout)


def test_kafka_topic_produce_consume_commit_and_group_offsets(kafka_conn):
    from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
    from confluent_kafka.admin import NewTopic

    bootstrap = kafka_conn["extra"]["bootstrap.servers"]
    admin = kafka_admin(kafka_conn)
    topic = _unique("dbops-test-topic")
    group = _unique("dbops-test-group")
    count = 60

    _wait(admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)]))
    consumer = None
    try:
        metadata = admin.list_topics(topic=topic, timeout=10)
        assert len(metadata.topics[topic].partitions) == 3

        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        delivered: list[tuple[str, int]] = []
        errors: list = []

        def on_delivery(err, msg):
            if err is not None:
                errors.append(err)
            else:
                delivered.append((msg.key().decode(), msg.partition()))

        for i in range(count):
            producer.produce(topic, key=f"key-{i % 6}", value=f"value-{i}", on_delivery=on_delivery)
        assert producer.flush(30) == 0
        assert not errors and len(delivered) == count
        key_partitions = {}
        for key, partition in delivered:
            assert key_partitions.setdefault(key, partition) == partition  # keys stick to a partition

        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000,
            }
        )
        consumer.subscribe([topic])
        received: dict[str, str] = {}
        last_offset: dict[int, int] = {}
        deadline = time.monotonic() + 90
        while len(received) < count and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            received[msg.value().decode()] = msg.key().decode()
            assert key_partitions[msg.key().decode()] == msg.partition()
            last_offset[msg.partition()] = max(last_offset.get(msg.partition(), -1), msg.offset())
        assert set(received) == {f"value-{i}" for i in range(count)}
        assert all(received[f"value-{i}"] == f"key-{i % 6}" for i in range(count))

        committed = consumer.commit(asynchronous=False)
        assert {(tp.partition, tp.offset) for tp in committed} == {(p, o + 1) for p, o in last_offset.items()}
        consumer.close()
        consumer = None

        request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(3)])
        result = admin.list_consumer_group_offsets([request])[group].result(timeout=30)
        offsets = {tp.partition: tp.offset for tp in result.topic_partitions if tp.topic == topic}
        expected = {p: last_offset.get(p, -1) + 1 for p in range(3)}
        assert {p: o for p, o in offsets.items() if o >= 0} == {p: o for p, o in expected.items() if o > 0}
        assert sum(o for o in offsets.values() if o > 0) == count
    finally:
        if consumer is not None:
            consumer.close()
        _wait(admin.delete_topics([topic], operation_timeout=30))
    deadline = time.monotonic() + 15
    while topic in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.5)
    assert topic not in admin.list_topics(timeout=10).topics
