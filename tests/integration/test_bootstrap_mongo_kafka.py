"""Mongo and Kafka bootstrap against the real local servers.

MongoDB: SecantusDB, a MongoDB-wire-compatible server (no real mongod can be had here);
Kafka: Tansu, a Kafka-compatible broker (no Apache Kafka can be had here). The code
paths are the production ones: pymongo and confluent-kafka's AdminClient.
"""

from __future__ import annotations

import copy
import uuid

import pytest

from dbops.sqlfiles import load_spec
from dbops.stores.kafka import bootstrap as kafka
from dbops.stores.mongo import bootstrap as mongo
from tests.support import kafka_admin, mongo_client

pytestmark = pytest.mark.integration


@pytest.fixture
def scratch_mongo(devstack):
    client = mongo_client(devstack.conn("dbops_mongo"))
    name = f"dbops_test_{uuid.uuid4().hex[:8]}"
    yield client[name]
    client.drop_database(name)
    client.close()


def test_mongo_bootstrap_from_empty_then_rerun_changes_nothing(scratch_mongo):
    spec = load_spec("mongo_collections.json")
    first = mongo.bootstrap(scratch_mongo, spec)
    assert not first.problems, first.render()
    assert set(scratch_mongo.list_collection_names()) == {c["name"] for c in spec["collections"]}
    ttl = scratch_mongo["task_status_cache"].index_information()["last_updated_1"]
    assert ttl["expireAfterSeconds"] == 86400
    assert scratch_mongo["task_status_cache"].index_information()["task_id_1"]["unique"] is True

    second = mongo.bootstrap(scratch_mongo, spec)
    assert second.modified == [] and not second.problems, second.render()
    assert not mongo.verify(scratch_mongo, spec).problems


def test_mongo_dry_run_creates_nothing(scratch_mongo):
    plan = mongo.bootstrap(scratch_mongo, load_spec("mongo_collections.json"), dry_run=True)
    assert plan.modified and all(c.detail.startswith("would") for c in plan.modified)
    assert scratch_mongo.list_collection_names() == []


def test_mongo_drift_a_dropped_index_and_a_changed_ttl_are_repaired_by_a_rerun(scratch_mongo):
    spec = load_spec("mongo_collections.json")
    mongo.bootstrap(scratch_mongo, spec)
    scratch_mongo["system_logs"].drop_index("level_1_timestamp_1")
    scratch_mongo.command(
        {"collMod": "task_status_cache", "index": {"name": "last_updated_1", "expireAfterSeconds": 60}}
    )
    found = {c.target.split(".")[-1]: c.action for c in mongo.verify(scratch_mongo, spec).problems}
    assert found == {"level_1_timestamp_1": "missing", "last_updated_1": "drift"}

    repaired = mongo.bootstrap(scratch_mongo, spec)
    assert {c.target.split(".")[-1] for c in repaired.modified} == {"level_1_timestamp_1", "last_updated_1"}
    assert scratch_mongo["task_status_cache"].index_information()["last_updated_1"]["expireAfterSeconds"] == 86400
    assert not mongo.verify(scratch_mongo, spec).problems


def test_mongo_an_index_with_other_options_is_reported_not_rebuilt(scratch_mongo):
    spec = load_spec("mongo_collections.json")
    # the seed's old mongo-init.js created task_id_1 without unique
    scratch_mongo["task_status_cache"].create_index([("task_id", 1)], name="task_id_1")
    report = mongo.bootstrap(scratch_mongo, spec)
    drift = [c for c in report.problems if c.target.endswith("task_id_1")]
    assert drift and "unique" in drift[0].detail
    assert "unique" not in scratch_mongo["task_status_cache"].index_information()["task_id_1"]


@pytest.fixture
def kafka_spec():
    """The platform's topic spec under unique names, so tests never touch the real topics."""
    spec = copy.deepcopy(load_spec("kafka_topics.json"))
    suffix = uuid.uuid4().hex[:8]
    for topic in spec["topics"]:
        topic["name"] = f"{topic['name']}-test-{suffix}"
    return spec


@pytest.fixture
def admin(devstack, kafka_spec):
    client = kafka_admin(devstack.conn("dbops_kafka"))
    yield client
    futures = client.delete_topics([t["name"] for t in kafka_spec["topics"]], operation_timeout=10)
    for future in futures.values():
        try:
            future.result(timeout=15)
        except Exception:
            pass  # a topic the test deleted itself


def test_kafka_topics_created_then_rerun_changes_nothing(admin, kafka_spec):
    first = kafka.bootstrap(admin, kafka_spec, replication_factor=1, timeout=15)
    assert not first.problems, first.render()
    described = kafka.describe_topics(admin, 15)
    for topic in kafka_spec["topics"]:
        assert described[topic["name"]]["partitions"] == 3
    configs = kafka.topic_configs(admin, [t["name"] for t in kafka_spec["topics"]], 15)
    for topic in kafka_spec["topics"]:
        assert configs[topic["name"]]["retention.ms"] == topic["configs"]["retention.ms"]

    second = kafka.bootstrap(admin, kafka_spec, replication_factor=1, timeout=15)
    assert second.modified == [] and not second.problems, second.render()


def test_kafka_a_missing_topic_is_found_by_verify_and_recreated(admin, kafka_spec):
    kafka.bootstrap(admin, kafka_spec, replication_factor=1, timeout=15)
    victim = kafka_spec["topics"][0]["name"]
    admin.delete_topics([victim], operation_timeout=10)[victim].result(timeout=15)
    problems = kafka.verify(admin, kafka_spec, replication_factor=1, timeout=15).problems
    assert [(c.action, c.target) for c in problems] == [("missing", f"topic {victim}")]
    repaired = kafka.bootstrap(admin, kafka_spec, replication_factor=1, timeout=15)
    assert [c.target for c in repaired.modified] == [f"topic {victim}"]


def test_kafka_fewer_partitions_are_grown_or_reported_as_unsupported(admin, kafka_spec):
    from confluent_kafka.admin import NewTopic

    small = kafka_spec["topics"][1]["name"]
    admin.create_topics([NewTopic(small, num_partitions=1, replication_factor=1)])[small].result(timeout=15)
    report = kafka.bootstrap(admin, kafka_spec, replication_factor=1, timeout=15)
    outcome = [c for c in report.changes if c.target == f"topic {small} partitions"][0]
    # Tansu has no CreatePartitions: it must be reported as such, never hidden or crash
    assert outcome.action in ("update", "unsupported"), outcome
    partitions = kafka.describe_topics(admin, 15)[small]["partitions"]
    assert partitions == (3 if outcome.action == "update" else 1)
    if outcome.action == "unsupported":
        assert kafka.verify(admin, kafka_spec, replication_factor=1, timeout=15).problems


def test_mongo_app_user_gets_its_roles_and_a_rotated_password(scratch_mongo):
    from dbops.report import StoreReport

    user = f"app_{uuid.uuid4().hex[:6]}"
    first = StoreReport("mongo")
    mongo.ensure_app_user(scratch_mongo, user, "first-password", first, dry_run=False)
    assert [c.action for c in first.changes] == ["create"]
    roles = scratch_mongo.command("usersInfo", user)["users"][0]["roles"]
    assert {r["role"] for r in roles} == {"readWrite", "dbAdmin"}
    assert mongo._can_login(scratch_mongo, user, "first-password")

    second = StoreReport("mongo")
    mongo.ensure_app_user(scratch_mongo, user, "first-password", second, dry_run=False)
    assert [c.action for c in second.changes] == ["unchanged"]

    rotated = StoreReport("mongo")
    mongo.ensure_app_user(scratch_mongo, user, "rotated-password", rotated, dry_run=False)
    assert [c.action for c in rotated.changes] == ["update"]
    assert mongo._can_login(scratch_mongo, user, "rotated-password")
    assert not mongo._can_login(scratch_mongo, user, "first-password")
    scratch_mongo.command("dropUser", user)
