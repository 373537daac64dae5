"""KafkaBackup against the real local broker (Tansu, a Kafka-compatible broker).

Every test uses its own uniquely named topics and groups, and deletes them.
Tansu quirks met here: a group join takes about half of ``session.timeout.ms`` (6000
here); describe_configs lists only configs set on the topic, labelled as defaults;
a consuming group is STABLE with an empty member list.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer
from confluent_kafka.admin import ConfigSource, NewTopic

from dbops.stores.kafka import backup as kb
from tests.support import kafka_admin

pytestmark = pytest.mark.integration

TIMEOUT = 30


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def kafka_conn(devstack) -> dict:
    return devstack.conn("dbops_kafka")


@pytest.fixture
def cluster(kafka_conn):
    """An admin client, and registries of topics / groups to delete afterwards."""
    admin = kafka_admin(kafka_conn)
    state = SimpleNamespace(
        admin=admin,
        bootstrap=kafka_conn["extra"]["bootstrap.servers"],
        factory=lambda: kafka_admin(kafka_conn),
        topics=[],
        groups=[],
    )
    yield state
    if state.groups:
        for future in admin.delete_consumer_groups(state.groups, request_timeout=10).values():
            try:
                future.result(timeout=15)
            except Exception:
                pass  # never created, or still has members
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [t for t in state.topics if t in existing]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=10).values():
            future.result(timeout=15)


def _create(cluster, name: str, partitions: int, configs: dict[str, str] | None = None) -> str:
    cluster.topics.append(name)
    new = NewTopic(name, num_partitions=partitions, replication_factor=1, config=configs or {})
    cluster.admin.create_topics([new], request_timeout=TIMEOUT)[name].result(timeout=TIMEOUT)
    return name


def _produce(cluster, topic: str, count: int) -> None:
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 5})
    for i in range(count):
        producer.produce(topic, key=f"k{i % 5}", value=f"v{i}")
    assert producer.flush(30) == 0


def _consumer(cluster, group: str) -> Consumer:
    cluster.groups.append(group)
    return Consumer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,  # Tansu: a join takes about half of it
            "heartbeat.interval.ms": 1000,
        }
    )


def _consume_and_commit(consumer: Consumer, topics: list[str], expected: int) -> dict[tuple[str, int], int]:
    consumer.subscribe(topics)
    seen = 0
    deadline = time.monotonic() + 90
    while seen < expected and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        seen += 1
    assert seen == expected
    committed = consumer.commit(asynchronous=False)
    return {(tp.topic, tp.partition): tp.offset for tp in committed if tp.offset >= 0}


def _group_offsets(admin, group: str) -> dict[tuple[str, int], int]:
    result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=TIMEOUT)
    return {
        (tp.topic, tp.partition): tp.offset
        for tp in result[group].result(timeout=TIMEOUT).topic_partitions
        if tp.offset >= 0
    }


def _dump(cluster, tmp_path: Path, lines: list[str]) -> tuple[kb.KafkaBackup, Path, dict]:
    adapter = kb.KafkaBackup(cluster.factory, timeout=TIMEOUT)
    staging = tmp_path / "staging"
    staging.mkdir(mode=0o700)
    result = adapter.dump(staging, lines.append)
    # the description is the dump's own topics.json content, not a later read of the broker
    written = json.loads((staging / kb.TOPICS_FILE).read_text())
    assert result.description["topics"] == written["topics"]
    return adapter, staging, {"details": result.details}


# --------------------------------------------------------------------------- round trip


def test_dump_check_restore_topics_and_offsets_under_new_names(cluster, tmp_path):
    events = _create(cluster, _unique("dbops-test-events"), 3, {"retention.ms": "3600000"})
    plain = _create(cluster, _unique("dbops-test-plain"), 2)
    group = _unique("dbops-test-group")
    _produce(cluster, events, 30)
    _produce(cluster, plain, 12)
    consumer = _consumer(cluster, group)
    lines: list[str] = []
    try:
        committed = _consume_and_commit(consumer, [events, plain], 42)
        assert sum(committed.values()) == 42

        adapter, staging, manifest = _dump(cluster, tmp_path, lines)

        # while its consumer is still in the group: offsets are not forced on it
        active = kb.restore_offsets(cluster.admin, staging, group_map={group: group}, log=lines.append)
        assert [c.action for c in active.changes] == ["drift"] and "active" in active.changes[0].detail
        assert _group_offsets(cluster.admin, group) == committed
    finally:
        consumer.close()

    # the files
    topics = json.loads((staging / kb.TOPICS_FILE).read_text())
    assert topics["topics"][events] == {
        "partitions": 3,
        "replication_factor": 1,
        "configs": {"retention.ms": "3600000"},
        "configs_from": "listing",  # Tansu lists only what was set
    }
    assert topics["topics"][plain]["configs"] == {} and topics["topics"][plain]["partitions"] == 2
    assert not any(kb.is_internal(name) for name in topics["topics"])
    groups = json.loads((staging / kb.GROUPS_FILE).read_text())["groups"]
    assert {(o["topic"], o["partition"]): o["offset"] for o in groups[group]["offsets"]} == committed
    assert (staging / kb.TOPICS_FILE).stat().st_mode & 0o777 == 0o600
    details = manifest["details"]
    assert details["cluster_id"] and details["brokers"] == 1
    assert details["topics"] == len(topics["topics"]) and details["consumer_groups"] >= 1

    checks = adapter.check(staging, manifest, lines.append)
    assert [c.name for c in checks] == [kb.TOPICS_FILE, kb.GROUPS_FILE] and all(c.ok for c in checks), checks

    # restore under new names
    topic_map = {events: f"{events}-restored", plain: f"{plain}-restored"}
    cluster.topics += list(topic_map.values())
    plan = kb.restore_topics(cluster.admin, staging, topic_map=topic_map, dry_run=True, log=lines.append)
    assert [c.action for c in plan.changes] == ["create", "create"]
    assert not set(topic_map.values()) & set(cluster.admin.list_topics(timeout=10).topics)

    report = kb.restore_topics(cluster.admin, staging, topic_map=topic_map, replication_factor=1, log=lines.append)
    assert sorted(c.action for c in report.changes) == ["create", "create"] and not report.problems, report.render()
    restored = kb.topic_definitions(cluster.admin, TIMEOUT)
    assert kb.compare_topics(topics["topics"], restored, topic_map=topic_map) == []
    assert restored[topic_map[events]]["configs"] == {"retention.ms": "3600000"}
    assert restored[topic_map[plain]]["partitions"] == 2

    again = kb.restore_topics(cluster.admin, staging, topic_map=topic_map, log=lines.append)
    assert [c.action for c in again.changes] == ["unchanged", "unchanged"], again.render()

    # offsets, for a renamed group on the renamed topics
    new_group = f"{group}-restored"
    cluster.groups.append(new_group)
    offsets = kb.restore_offsets(
        cluster.admin, staging, group_map={group: new_group}, topic_map=topic_map, log=lines.append
    )
    assert [c.action for c in offsets.changes] == ["update"], offsets.render()
    assert _group_offsets(cluster.admin, new_group) == {
        (topic_map[topic], partition): offset for (topic, partition), offset in committed.items()
    }
    rerun = kb.restore_offsets(cluster.admin, staging, group_map={group: new_group}, topic_map=topic_map)
    assert [c.action for c in rerun.changes] == ["unchanged"], rerun.render()
    # the original group is untouched
    assert _group_offsets(cluster.admin, group) == committed


def test_existing_topics_that_differ_are_reported_never_changed(cluster, tmp_path):
    source = _create(cluster, _unique("dbops-test-src"), 3, {"retention.ms": "7200000", "cleanup.policy": "delete"})
    adapter, staging, _ = _dump(cluster, tmp_path, [])
    target = _create(cluster, f"{source}-restored", 1, {"retention.ms": "60000"})

    report = kb.restore_topics(cluster.admin, staging, topic_map={source: target})
    assert [c.action for c in report.problems] == ["drift"], report.render()
    detail = report.problems[0].detail
    assert "partitions 1, backup 3" in detail and "retention.ms 60000, backup 7200000" in detail
    assert "cleanup.policy <default>, backup delete" in detail
    now = kb.topic_definitions(cluster.admin, TIMEOUT, names=[target])[target]
    assert now["partitions"] == 1 and now["configs"] == {"retention.ms": "60000"}

    with pytest.raises(ValueError, match="not in this backup"):
        kb.restore_topics(cluster.admin, staging, topic_map={_unique("dbops-test-none"): "x"})


def test_offsets_for_a_missing_topic_are_reported(cluster, tmp_path):
    topic = _create(cluster, _unique("dbops-test-off"), 2)
    group = _unique("dbops-test-group")
    _produce(cluster, topic, 8)
    consumer = _consumer(cluster, group)
    try:
        _consume_and_commit(consumer, [topic], 8)
    finally:
        consumer.close()
    _, staging, _ = _dump(cluster, tmp_path, [])
    ghost = f"{topic}-never-created"
    report = kb.restore_offsets(
        cluster.admin, staging, group_map={group: f"{group}-x"}, topic_map={topic: ghost}, dry_run=True
    )
    assert {c.action for c in report.changes} == {"missing", "unchanged"}, report.render()
    assert all("does not exist" in c.detail for c in report.problems)


# --------------------------------------------------------------------------- check


def test_check_fails_on_broken_or_invalid_files(cluster, tmp_path):
    _create(cluster, _unique("dbops-test-chk"), 1, {"retention.ms": "1000000"})
    adapter, staging, manifest = _dump(cluster, tmp_path, [])
    assert all(c.ok for c in adapter.check(staging, manifest, lambda _: None))

    topics_path = staging / kb.TOPICS_FILE
    good = topics_path.read_text()
    topics_path.write_text(good[: len(good) // 2])
    checks = {c.name: c for c in adapter.check(staging, manifest, lambda _: None)}
    assert not checks[kb.TOPICS_FILE].ok and "not JSON" in checks[kb.TOPICS_FILE].detail
    assert checks[kb.GROUPS_FILE].ok

    document = json.loads(good)
    name = next(iter(document["topics"]))
    document["topics"][name]["partitions"] = 0
    document["topics"][name]["configs"]["retention.ms"] = 1000000  # a number, not a string
    topics_path.write_text(json.dumps(document))
    checks = {c.name: c for c in adapter.check(staging, manifest, lambda _: None)}
    assert not checks[kb.TOPICS_FILE].ok
    assert "partitions" in checks[kb.TOPICS_FILE].detail and "retention.ms" in checks[kb.TOPICS_FILE].detail
    with pytest.raises(ValueError, match="invalid Kafka backup"):
        kb.restore_topics(cluster.admin, staging, dry_run=True)

    (staging / kb.GROUPS_FILE).unlink()
    checks = {c.name: c for c in adapter.check(staging, manifest, lambda _: None)}
    assert not checks[kb.GROUPS_FILE].ok and "missing" in checks[kb.GROUPS_FILE].detail


# --------------------------------------------------------------------------- brokers that list every config


def _entry(name, value, source, is_default=False):
    return SimpleNamespace(name=name, value=value, source=source.value, is_default=is_default, is_read_only=False)


def test_explicit_configs_from_a_full_listing_keep_only_topic_level_entries():
    """Apache Kafka lists every config with its source; only DYNAMIC_TOPIC_CONFIG was set."""
    entries = {f"x.default.{i}": _entry(f"x.default.{i}", "1", ConfigSource.DEFAULT_CONFIG, True) for i in range(20)}
    for key in ("cleanup.policy", "segment.bytes", "max.message.bytes", "min.insync.replicas"):
        entries[key] = _entry(key, "1", ConfigSource.DEFAULT_CONFIG, True)
    entries["retention.ms"] = _entry("retention.ms", "3600000", ConfigSource.DYNAMIC_TOPIC_CONFIG)
    entries["compression.type"] = _entry("compression.type", "zstd", ConfigSource.STATIC_BROKER_CONFIG)
    entries["secret.thing"] = _entry("secret.thing", None, ConfigSource.DYNAMIC_TOPIC_CONFIG)
    assert kb.explicit_configs(entries) == ({"retention.ms": "3600000"}, "source")

    # Tansu: only what was set, each labelled a default
    tansu = {"retention.ms": _entry("retention.ms", "3600000", ConfigSource.DEFAULT_CONFIG, True)}
    assert kb.explicit_configs(tansu) == ({"retention.ms": "3600000"}, "listing")


# --------------------------------------------------------------------------- the adapter


class _Links:
    """What the task layer passes (dbops.runtime), reduced to the local broker."""

    def __init__(self, conn: dict) -> None:
        self.conn = conn
        self.asked: list[str] = []

    def kafka_admin(self, conn_id: str):
        self.asked.append(conn_id)
        return kafka_admin(self.conn)


def _adapter(kafka_conn):
    from dbops.config import DbopsConfig
    from dbops.stores.kafka.adapter import KafkaAdapter

    config = DbopsConfig.model_validate({"kafka": {"replication_factor": 1, "request_timeout_s": TIMEOUT}})
    links = _Links(kafka_conn)
    return KafkaAdapter(config, links), links


def _take(adapter, tmp_path, log):
    from datetime import timedelta

    from dbops.backup.repository import BackupRepository
    from dbops.backup.runner import take_backup

    repo = BackupRepository(tmp_path / "repo")
    take_backup(
        repo,
        adapter.series_backup(None),
        store="kafka",
        subject=None,
        run_id=_unique("run"),
        dag_id="test",
        logical_date=None,
        force=False,
        stale_staging=timedelta(hours=1),
        log=log,
    )
    return repo, repo.list("kafka")[-1]


class _BusyCluster:
    """A writer that produces, and creates and deletes topics, for as long as it runs."""

    def __init__(self, cluster) -> None:
        import threading

        self.cluster, self.stop, self.rounds = cluster, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        admin = kafka_admin({"extra": {"bootstrap.servers": self.cluster.bootstrap}})
        producer = Producer({"bootstrap.servers": self.cluster.bootstrap, "linger.ms": 1})
        while not self.stop.is_set():
            name = _unique("dbops-test-churn")
            self.cluster.topics.append(name)
            admin.create_topics([NewTopic(name, 1, 1)], request_timeout=TIMEOUT)[name].result(timeout=TIMEOUT)
            for i in range(20):
                producer.produce(name, value=f"m{i}")
            producer.flush(10)
            admin.delete_topics([name], operation_timeout=TIMEOUT)[name].result(timeout=TIMEOUT)
            self.rounds += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(60)


def test_adapter_backup_drill_and_restore_judge_the_dump_not_a_later_read_of_a_busy_broker(
    cluster, kafka_conn, tmp_path
):
    """The description is the dump's topics.json: topics created and deleted by a writer
    during and after the backup do not make the drill or the restore fail (they did when the
    description was read from the broker after the dump)."""
    from dbops.backup.adapter import RestorePlan, RestoreRequest
    from dbops.backup.restore import run_drill
    from dbops.backup.runner import source_description

    adapter, links = _adapter(kafka_conn)
    kept = _create(cluster, _unique("dbops-test-kept"), 2, {"retention.ms": "3600000"})
    gone = _create(cluster, _unique("dbops-test-gone"), 3)
    lines: list[str] = []
    with _BusyCluster(cluster) as writer:
        repo, backup = _take(adapter, tmp_path, lines.append)
        # the cluster moves on: a topic of the backup is deleted after the dump
        cluster.admin.delete_topics([gone], operation_timeout=TIMEOUT)[gone].result(timeout=TIMEOUT)
        written = json.loads((backup.path / kb.TOPICS_FILE).read_text())["topics"]
        assert source_description(backup)["topics"] == written
        assert {kept, gone} <= set(written)

        assert adapter.series(lines.append) == [None]
        assert adapter.drillable and "dbops_drill_" in adapter.drill_target(backup)
        drilled = run_drill(
            repo,
            backup,
            target=adapter.drill_target(backup),
            drill=lambda b, found: adapter.drill(b, found, lines.append),
            run_id="drill",
            dag_id="test",
            log=lines.append,
        )
        assert drilled["ok"], drilled
        assert not [
            t
            for t in cluster.admin.list_topics(timeout=10).topics
            if t.startswith("dbops_drill_") and backup.backup_id.lower() in t
        ]

        request = RestoreRequest("kafka", backup.backup_id, target="ignored-target", topics=(gone, kept))
        adapter.check_request(request)
        assert adapter.restore_subject(request) is None
        plan = adapter.plan_restore(backup, request, lines.append)
        assert any("ignored for kafka" in line for line in lines)
        assert plan.target == "dbops_kafka" and not plan.already and not plan.overwrite and plan.exists
        assert any(gone in a and a.startswith("create") for a in plan.actions), plan.actions
        again = RestorePlan.from_dict(json.loads(json.dumps(plan.to_dict())))  # through XCom
        result = adapter.restore(backup, again, lines.append)
        assert result["differences"] == [] and result["created_topics"] == [gone], result
        assert kb.topic_definitions(cluster.admin, TIMEOUT, names=[gone])[gone]["partitions"] == 3
        rerun = adapter.restore(backup, adapter.plan_restore(backup, request, lines.append), lines.append)
        assert rerun["already"] and rerun["differences"] == []
    assert writer.rounds >= 1
    assert set(links.asked) == {"dbops_kafka"}


def test_a_drill_or_compare_still_fails_when_the_restored_topics_differ(cluster, kafka_conn, tmp_path):
    """Negative: a restored copy that differs from the backup's description fails."""
    from dbops.backup.adapter import DrillComparison
    from dbops.backup.runner import DESCRIPTION_FILE

    adapter, _ = _adapter(kafka_conn)
    topic = _create(cluster, _unique("dbops-test-diff"), 2, {"retention.ms": "3600000"})
    _, backup = _take(adapter, tmp_path, lambda _: None)
    description = json.loads((backup.path / DESCRIPTION_FILE).read_text())
    changed = json.loads(json.dumps(description))
    changed["topics"][topic]["partitions"] = 4
    differences, _ = adapter.compare(description, changed)
    assert differences == [f"topic {topic}: partitions 4, expected 2"]

    # the drill's restored copy (from topics.json) no longer matches a description that says 4
    # (run_drill would refuse the edited file by its sha256 first: call the store's drill itself)
    (backup.path / DESCRIPTION_FILE).write_text(json.dumps(changed))
    found = DrillComparison()
    adapter.drill(backup, found, lambda _: None)
    assert any("partitions 2, expected 4" in d for d in found.differences), found.differences
    assert not found.leftovers and not [
        t for t in cluster.admin.list_topics(timeout=10).topics if t.startswith("dbops_drill_") and topic in t
    ]


def test_adapter_refuses_bad_topic_names_and_topics_the_backup_lacks(cluster, kafka_conn, tmp_path):
    from dbops.backup.adapter import RestoreRefused, RestoreRequest

    adapter, _ = _adapter(kafka_conn)
    _create(cluster, _unique("dbops-test-ref"), 1)
    with pytest.raises(RestoreRefused, match="not Kafka topic names"):
        adapter.check_request(RestoreRequest("kafka", "latest", topics=("ok", "bad name/..")))
    _, backup = _take(adapter, tmp_path, lambda _: None)
    ghost = _unique("dbops-test-ghost")
    with pytest.raises(RestoreRefused, match="not in backup"):
        adapter.plan_restore(backup, RestoreRequest("kafka", backup.backup_id, topics=(ghost,)), lambda _: None)
