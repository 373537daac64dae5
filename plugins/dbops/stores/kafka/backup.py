"""Kafka backups: topic definitions and consumer group offsets, through the Admin API.

No Airflow import. A Kafka "backup" here is what lets a cluster be rebuilt around its
data, not the data itself (that is Kafka's replication and retention, or a mirror):

- ``topics.json``: per topic, partitions, replication factor and the configs *set on
  the topic* (not broker defaults: a restore recreates what was set and lets the target
  cluster's defaults apply to the rest);
- ``consumer_groups.json``: per consumer group, the committed offset of every
  topic-partition.

Restoring recreates missing topics (optionally renamed, for drills), reports existing
ones that differ, never deletes nor alters a live topic; offsets are set with
``alter_consumer_group_offsets`` only for groups without active members.

Brokers differ (the local stack runs Tansu, production Apache Kafka); where the code handles a
quirk it says so:

- Tansu answers ``describe_configs`` with only the configs set on the topic, and labels
  each one ``is_default=True, source=DEFAULT_CONFIG``. Apache Kafka lists every config,
  the set ones with ``source=DYNAMIC_TOPIC_CONFIG``. :func:`explicit_configs` tells the
  two answers apart by their shape (a full listing always holds the standard keys);
- Tansu's ``list_consumer_groups`` gives every group state UNKNOWN, and
  ``describe_consumer_groups`` reports a STABLE group with no members: a group counts
  as active when it has members *or* a state other than EMPTY/DEAD/UNKNOWN;
- an unknown group is EMPTY on Tansu, DEAD on Kafka: both mean "free to set".
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka import libversion as librdkafka_version
from confluent_kafka import version as confluent_version
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, NewTopic

from dbops.backup.adapter import Check, DumpResult, LogFn
from dbops.report import StoreReport
from dbops.sqlfiles import SCRIPTS_DIR
from dbops.stores.kafka.bootstrap import _unsupported, _wait, describe_topics
from dbops.tools import write_secret_file

TOPICS_FILE = "topics.json"
GROUPS_FILE = "consumer_groups.json"
SCHEMA_FILE = "kafka_backup.schema.json"
FORMAT = 1

# every Apache Kafka topic config listing holds these; an answer without them lists only
# what was set on the topic (Tansu)
_FULL_LISTING_KEYS = frozenset(
    {"cleanup.policy", "retention.ms", "segment.bytes", "max.message.bytes", "min.insync.replicas"}
)
# group states in which nobody consumes: offsets may be set
_IDLE_STATES = frozenset({ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD, ConsumerGroupState.UNKNOWN})

_logger = logging.getLogger(__name__)


def is_internal(topic: str) -> bool:
    """``__consumer_offsets``, ``__transaction_state`` and the like."""
    return topic.startswith("__")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------- reading a cluster


def cluster_info(admin: AdminClient, timeout: float) -> dict[str, Any]:
    """cluster id and broker count (DescribeCluster, else the metadata of list_topics)."""
    try:
        described = admin.describe_cluster(request_timeout=timeout).result(timeout=timeout)
        return {"cluster_id": described.cluster_id, "brokers": len(described.nodes)}
    except KafkaException as exc:
        if not _unsupported(exc):
            raise
    metadata = admin.list_topics(timeout=timeout)
    return {"cluster_id": metadata.cluster_id, "brokers": len(metadata.brokers)}


def explicit_configs(entries: dict[str, Any]) -> tuple[dict[str, str], str]:
    """The configs set on a topic, and how they were told apart ("source" or "listing").

    A broker that lists every config (Apache Kafka) labels each entry: keep those whose
    source is the topic itself (DYNAMIC_TOPIC_CONFIG; before KIP-226 brokers, not
    ``is_default``). Tansu lists only the set ones but labels them DEFAULT_CONFIG: there,
    everything listed is explicit.
    """
    full_listing = _FULL_LISTING_KEYS <= set(entries) and len(entries) >= 20
    configs = {}
    for name, entry in entries.items():
        if entry.value is None or entry.is_read_only:  # sensitive (hidden) or not settable
            continue
        if full_listing:
            source = int(getattr(entry.source, "value", entry.source))  # an int in confluent-kafka 2.x
            explicit = source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value or (
                source == ConfigSource.UNKNOWN_CONFIG.value and not entry.is_default
            )
            if not explicit:
                continue
        configs[name] = entry.value
    return dict(sorted(configs.items())), "source" if full_listing else "listing"


def topic_definitions(
    admin: AdminClient,
    timeout: float,
    *,
    include_internal: bool = False,
    names: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """name -> partitions, replication factor, explicit configs (see explicit_configs)."""
    listed = describe_topics(admin, timeout)
    selected = sorted(
        name for name in listed if (names is None or name in names) and (include_internal or not is_internal(name))
    )
    result: dict[str, dict[str, Any]] = {
        name: {"partitions": listed[name]["partitions"], "replication_factor": listed[name]["replication"]}
        for name in selected
    }
    if not selected:
        return result
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in selected]
    futures = admin.describe_configs(resources, request_timeout=timeout)
    for resource, future in futures.items():
        configs, how = explicit_configs(future.result(timeout=timeout))
        result[resource.name].update(configs=configs, configs_from=how)
    return result


def _group_state(description) -> tuple[str, int]:
    return description.state.name, len(description.members)


def _is_active(state: str, members: int) -> bool:
    # Tansu: STABLE with an empty member list while a consumer is in the group
    return members > 0 or ConsumerGroupState[state] not in _IDLE_STATES


def consumer_groups(admin: AdminClient, timeout: float, *, include_internal: bool = False) -> dict[str, Any]:
    """group -> state, member count and committed offsets; plus groups that could not be read."""
    listing = admin.list_consumer_groups(request_timeout=timeout).result(timeout=timeout)
    errors = {str(i): str(err) for i, err in enumerate(listing.errors)}
    ids = sorted(g.group_id for g in listing.valid)
    types = {g.group_id: (g.type.name if getattr(g, "type", None) is not None else None) for g in listing.valid}
    groups: dict[str, Any] = {}
    if not ids:
        return {"groups": groups, "errors": errors}
    descriptions = admin.describe_consumer_groups(ids, request_timeout=timeout)
    for group_id in ids:
        try:
            state, members = _group_state(descriptions[group_id].result(timeout=timeout))
            # librdkafka: one group per ListConsumerGroupOffsets request
            future = admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group_id)], request_timeout=timeout
            )[group_id]
            committed = future.result(timeout=timeout).topic_partitions or []
        except KafkaException as exc:
            errors[group_id] = str(exc)
            continue
        offsets = [
            {"topic": tp.topic, "partition": tp.partition, "offset": tp.offset, "metadata": tp.metadata or None}
            for tp in sorted(committed, key=lambda tp: (tp.topic, tp.partition))
            if tp.error is None and tp.offset >= 0 and (include_internal or not is_internal(tp.topic))
        ]
        groups[group_id] = {"state": state, "type": types.get(group_id), "members": members, "offsets": offsets}
    return {"groups": groups, "errors": errors}


def compare_topics(
    expected: dict[str, dict[str, Any]],
    actual: dict[str, dict[str, Any]],
    *,
    topic_map: dict[str, str] | None = None,
    replication: bool = True,
) -> list[str]:
    """Differences between topic definitions (``expected`` names mapped through topic_map)."""
    problems = []
    for name, want in sorted(expected.items()):
        if topic_map is not None and name not in topic_map:
            continue
        target = (topic_map or {}).get(name, name)
        have = actual.get(target)
        if have is None:
            problems.append(f"topic {target} missing")
            continue
        keys = ["partitions", "configs"] + (["replication_factor"] if replication else [])
        for key in keys:
            if want.get(key) != have.get(key):
                problems.append(f"topic {target}: {key} {have.get(key)!r}, expected {want.get(key)!r}")
    return problems


# ---------------------------------------------------------------------- the files


@cache
def schema() -> dict[str, Any]:
    return json.loads((SCRIPTS_DIR / SCHEMA_FILE).read_text(encoding="utf-8"))


def _validator(definition: str):
    from jsonschema import Draft202012Validator

    return Draft202012Validator({**schema(), "$ref": f"#/$defs/{definition}"})


def validate_file(path: Path, definition: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The parsed file and its schema errors (``definition``: topics_file, consumer_groups_file)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, [f"{path.name} missing"]
    except (ValueError, UnicodeDecodeError) as exc:
        return None, [f"{path.name} is not JSON: {exc}"]
    errors = [
        f"{path.name}: {'/'.join(str(p) for p in err.absolute_path) or '(root)'}: {err.message}"
        for err in sorted(_validator(definition).iter_errors(document), key=lambda e: list(e.absolute_path))
    ]
    return document, errors


def load_file(backup_dir: Path, name: str, definition: str) -> dict[str, Any]:
    document, errors = validate_file(Path(backup_dir) / name, definition)
    if errors or document is None:
        raise ValueError("invalid Kafka backup: " + "; ".join(errors[:5]))
    return document


def _write_json(path: Path, document: dict[str, Any]) -> int:
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    write_secret_file(path, text)  # 0600 like every backup file, never overwrites
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
    return len(text.encode())


# ---------------------------------------------------------------------- the adapter


class KafkaBackup:
    """Topic definitions and consumer group offsets of one cluster."""

    store = "kafka"

    def __init__(
        self,
        admin_factory: Callable[[], AdminClient],
        *,
        timeout: float = 30.0,
        include_internal: bool = False,
    ) -> None:
        self.admin_factory = admin_factory
        self.timeout = timeout
        self.include_internal = include_internal

    def dump(self, staging: Path, log: LogFn) -> DumpResult:
        admin = self.admin_factory()  # referenced until every future has resolved
        cluster = cluster_info(admin, self.timeout)
        topics = topic_definitions(admin, self.timeout, include_internal=self.include_internal)
        groups = consumer_groups(admin, self.timeout, include_internal=self.include_internal)
        taken_at = _now()
        common = {"format": FORMAT, **cluster, "taken_at": taken_at}
        topics_bytes = _write_json(
            Path(staging) / TOPICS_FILE,
            {**common, "kind": "kafka-topics", "include_internal": self.include_internal, "topics": topics},
        )
        groups_bytes = _write_json(
            Path(staging) / GROUPS_FILE,
            {**common, "kind": "kafka-consumer-groups", **groups},
        )
        for group_id, error in groups["errors"].items():
            log(f"kafka: consumer group {group_id}: offsets not read: {error}")
        listing = sorted({t["configs_from"] for t in topics.values() if t.get("configs_from") is not None})
        offsets = sum(len(g["offsets"]) for g in groups["groups"].values())
        log(
            f"kafka: cluster {cluster['cluster_id']} ({cluster['brokers']} broker(s)): {len(topics)} topics, "
            f"{len(groups['groups'])} consumer groups, {offsets} committed offsets"
        )
        if "listing" in listing:
            log("kafka: this broker lists only the configs set on a topic (Tansu-like): all of them are kept")
        return DumpResult(
            tool="confluent-kafka AdminClient",
            tool_version=f"confluent-kafka {confluent_version()[0]}, librdkafka {librdkafka_version()[0]}",
            # the Admin API does not report a broker's software version
            server_version="unknown",
            compression="none",
            details={
                **cluster,
                "files": {TOPICS_FILE: topics_bytes, GROUPS_FILE: groups_bytes},
                "topics": len(topics),
                "partitions": sum(t["partitions"] for t in topics.values()),
                "consumer_groups": len(groups["groups"]),
                "committed_offsets": offsets,
                "group_errors": len(groups["errors"]),
                "configs_from": listing,
                "include_internal": self.include_internal,
            },
            # exactly the definitions written in topics.json: what a drill or restore compares with
            description={**cluster, "taken_at": taken_at, "topics": topics},
        )

    def check(self, backup_dir: Path, manifest: dict[str, Any], log: LogFn) -> list[Check]:
        checks = []
        details = manifest.get("details", manifest) if isinstance(manifest, dict) else {}
        for name, definition, count_key, body_key in (
            (TOPICS_FILE, "topics_file", "topics", "topics"),
            (GROUPS_FILE, "consumer_groups_file", "consumer_groups", "groups"),
        ):
            document, errors = validate_file(Path(backup_dir) / name, definition)
            if document is None:  # unreadable: errors says why
                document = {}
            if not errors and count_key in details and len(document[body_key]) != details[count_key]:
                errors.append(f"{name}: {len(document[body_key])} {body_key}, the manifest says {details[count_key]}")
            if not errors and document.get("errors"):
                # a group whose offsets could not be read: the backup is incomplete
                unread = ", ".join(f"{k}: {v}" for k, v in list(document["errors"].items())[:5])
                errors.append(f"{name}: offsets of {len(document['errors'])} group(s) not read ({unread})")
            if errors:
                detail = "; ".join(errors[:5])
            else:
                detail = f"valid against {SCHEMA_FILE}: {len(document[body_key])} {body_key}"
            checks.append(Check(name, not errors, detail))
        for check in checks:
            log(f"kafka check {check.name}: {'ok' if check.ok else 'FAILED'} {check.detail}")
        return checks


# ---------------------------------------------------------------------- restore


def _select(names, mapping: dict[str, str] | None, what: str) -> dict[str, str]:
    """source name -> target name: all (same names) without a map, else only those mapped."""
    names = set(names)
    if mapping is None:
        return {n: n for n in sorted(names)}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ValueError(f"{what} not in this backup: {unknown}")
    return dict(sorted(mapping.items()))


def restore_topics(
    admin: AdminClient,
    backup_dir: Path,
    *,
    topic_map: dict[str, str] | None = None,
    replication_factor: int | None = None,
    dry_run: bool = False,
    log: LogFn | None = None,
    timeout: float = 30.0,
) -> StoreReport:
    """Recreate the backup's missing topics with their partitions and configs.

    ``topic_map`` (source -> target name) restores only the mapped topics, under their
    new names (drills); without it every topic of the backup, under its own name.
    ``replication_factor`` overrides the backup's (a smaller drill cluster). Existing
    topics are compared, never altered or deleted: differences are reported as drift.
    Failures are in ``report.problems`` (as "missing"), never raised half-way.
    """
    log = log or _logger.info
    document = load_file(backup_dir, TOPICS_FILE, "topics_file")
    topics = document["topics"]
    # internal topics (in a backup made with include_internal) belong to the brokers:
    # recreated only when a topic_map names them
    selection = _select([t for t in topics if topic_map is not None or not is_internal(t)], topic_map, "topics")
    report = StoreReport("kafka", dry_run=dry_run)
    existing = topic_definitions(admin, timeout, include_internal=True, names=list(selection.values()))
    to_create = []
    for source, target in selection.items():
        want = topics[source]
        rf = replication_factor or want["replication_factor"]
        label = f"topic {target}" + (f" (from {source})" if target != source else "")
        have = existing.get(target)
        if have is None:
            configs = ", ".join(f"{k}={v}" for k, v in want["configs"].items()) or "no configs set"
            detail = f"{want['partitions']} partitions, replication {rf}, {configs}"
            if dry_run:
                report.add("create", label, f"would create: {detail}")
            else:
                to_create.append((label, detail, NewTopic(target, want["partitions"], rf, config=want["configs"])))
            continue
        differ = []
        if have["partitions"] != want["partitions"]:
            differ.append(f"partitions {have['partitions']}, backup {want['partitions']}")
        if have["replication_factor"] != rf:
            differ.append(f"replication {have['replication_factor']}, wanted {rf}")
        for key in sorted(set(want["configs"]) | set(have["configs"])):
            if want["configs"].get(key) != have["configs"].get(key):
                now, then = have["configs"].get(key, "<default>"), want["configs"].get(key, "<default>")
                differ.append(f"{key} {now}, backup {then}")
        if differ:
            report.add("drift", label, "exists and differs (left as it is): " + "; ".join(differ))
        else:
            report.add("unchanged", label, "exists as in the backup")
    if to_create:
        futures = admin.create_topics([new for _, _, new in to_create], request_timeout=timeout)
        outcome = _wait(futures, timeout)
        for label, detail, new in to_create:
            exc = outcome[new.topic]
            if exc is None:
                report.add("create", label, f"created: {detail}")
            else:
                report.add("missing", label, f"create failed: {exc}")
    for line in report.render().splitlines():
        log(line)
    return report


def restore_offsets(
    admin: AdminClient,
    backup_dir: Path,
    *,
    group_map: dict[str, str] | None = None,
    topic_map: dict[str, str] | None = None,
    dry_run: bool = False,
    log: LogFn | None = None,
    timeout: float = 30.0,
) -> StoreReport:
    """Set the backup's committed offsets on consumer groups without active members.

    ``group_map`` / ``topic_map`` (source -> target) restrict to and rename the mapped
    groups / topics; without a map, all under their own names. A group with members (or
    in a rebalancing or stable state) is reported, not touched: its consumers must stop
    first. Offsets on a topic (or partition) the target cluster lacks are reported.
    Committed offsets are positions in the log: on a recreated, empty topic they point
    past its end and a consumer applies its ``auto.offset.reset``.
    """
    log = log or _logger.info
    document = load_file(backup_dir, GROUPS_FILE, "consumer_groups_file")
    groups = document["groups"]
    selection = _select(groups, group_map, "consumer groups")
    report = StoreReport("kafka", dry_run=dry_run)
    live_topics = describe_topics(admin, timeout)
    descriptions = {}
    if selection:
        descriptions = admin.describe_consumer_groups(list(selection.values()), request_timeout=timeout)
    for source, target in selection.items():
        label = f"group {target}" + (f" (from {source})" if target != source else "")
        wanted: list[TopicPartition] = []
        for entry in groups[source]["offsets"]:
            topic = entry["topic"] if topic_map is None else topic_map.get(entry["topic"])
            if topic is None:
                continue  # a topic the map leaves out
            partitions = live_topics.get(topic, {}).get("partitions", 0)
            if entry["partition"] >= partitions:
                where = f"partition {entry['partition']}" if partitions else "the topic"
                report.add("missing", f"{label} {topic}[{entry['partition']}]", f"{where} does not exist")
                continue
            metadata = entry.get("metadata")
            # confluent-kafka takes metadata only as a str (None is refused): leave it out when empty
            if metadata:
                wanted.append(TopicPartition(topic, entry["partition"], entry["offset"], metadata))
            else:
                wanted.append(TopicPartition(topic, entry["partition"], entry["offset"]))
        if not wanted:
            report.add("unchanged", label, "no offsets to set")
            continue
        try:
            state, members = _group_state(descriptions[target].result(timeout=timeout))
        except KafkaException as exc:
            report.add("drift", label, f"cannot describe the group: {exc}")
            continue
        if _is_active(state, members):
            report.add(
                "drift",
                label,
                f"group is active (state {state}, {members} member(s)): offsets not set; stop its consumers and rerun",
            )
            continue
        current = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(target, [TopicPartition(tp.topic, tp.partition) for tp in wanted])],
            request_timeout=timeout,
        )[target].result(timeout=timeout)
        now = {(tp.topic, tp.partition): tp.offset for tp in current.topic_partitions or []}
        changes = [tp for tp in wanted if now.get((tp.topic, tp.partition)) != tp.offset]
        if not changes:
            report.add("unchanged", label, f"{len(wanted)} offsets as in the backup")
            continue
        summary = ", ".join(f"{tp.topic}[{tp.partition}]={tp.offset}" for tp in changes[:10])
        if dry_run:
            report.add("update", label, f"would set {len(changes)} offsets: {summary}")
            continue
        try:
            result = admin.alter_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(target, changes)], request_timeout=timeout
            )[target].result(timeout=timeout)
        except KafkaException as exc:
            report.add("drift", label, f"offsets not set: {exc}")
            continue
        failed = [f"{tp.topic}[{tp.partition}]: {tp.error}" for tp in result.topic_partitions or [] if tp.error]
        if failed:
            # e.g. UNKNOWN_MEMBER_ID: a consumer joined between the check and the commit
            report.add("drift", label, "broker refused: " + "; ".join(failed[:5]))
        else:
            report.add("update", label, f"set {len(changes)} offsets: {summary}")
    for line in report.render().splitlines():
        log(line)
    return report
