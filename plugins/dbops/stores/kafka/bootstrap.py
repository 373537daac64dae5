"""Kafka: topics as specified (partitions, replication, configs), through the Admin API.

Takes a confluent-kafka ``AdminClient``; no Airflow import. Brokers differ in what
they support (a Kafka-compatible broker may lack CreatePartitions): such a gap is
reported as ``unsupported`` with the broker's words, never a crash and never hidden.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from dbops.report import StoreReport


def topic_specs(spec: dict[str, Any]) -> list[dict[str, Any]]:
    topics = spec["topics"]
    if isinstance(topics, dict):  # {"name": {...}} or [{"name": ..., ...}]
        topics = [{"name": name, **body} for name, body in topics.items()]
    return topics


def _unsupported(exc: KafkaException) -> bool:
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.code() in (
        KafkaError._UNSUPPORTED_FEATURE,
        KafkaError.UNSUPPORTED_VERSION,
        KafkaError.INVALID_REQUEST,
    )


def _wait(futures: dict, timeout: float) -> dict:
    """Resolve every future; return {key: exception or None}."""
    outcome: dict[Any, KafkaException | None] = {}
    for key, future in futures.items():
        try:
            future.result(timeout=timeout)
            outcome[key] = None
        except KafkaException as exc:
            outcome[key] = exc
    return outcome


def describe_topics(admin: AdminClient, timeout: float) -> dict[str, dict[str, Any]]:
    """name -> {"partitions": n, "replication": r} for every topic the broker lists."""
    metadata = admin.list_topics(timeout=timeout)
    result = {}
    for name, topic in metadata.topics.items():
        if topic.error is not None:
            continue
        partitions = topic.partitions.values()
        result[name] = {
            "partitions": len(topic.partitions),
            "replication": max((len(p.replicas) for p in partitions), default=0),
        }
    return result


def topic_configs(admin: AdminClient, names: list[str], timeout: float) -> dict[str, dict[str, str]]:
    if not names:
        return {}
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in names]
    futures = admin.describe_configs(resources, request_timeout=timeout)
    configs = {}
    for resource, future in futures.items():
        entries = future.result(timeout=timeout)
        configs[resource.name] = {k: e.value for k, e in entries.items() if e.value is not None}
    return configs


def bootstrap(
    admin: AdminClient,
    spec: dict[str, Any],
    *,
    replication_factor: int,
    timeout: float = 30.0,
    dry_run: bool = False,
) -> StoreReport:
    report = StoreReport("kafka", dry_run=dry_run)
    topics = topic_specs(spec)
    existing = describe_topics(admin, timeout)

    missing = [t for t in topics if t["name"] not in existing]
    if missing and dry_run:
        for t in missing:
            report.add("create", f"topic {t['name']}", f"{t['partitions']} partitions")
    elif missing:
        new = [
            NewTopic(
                t["name"],
                num_partitions=t["partitions"],
                replication_factor=replication_factor,
                config={k: str(v) for k, v in t.get("configs", {}).items()},
            )
            for t in missing
        ]
        for name, exc in _wait(admin.create_topics(new, request_timeout=timeout), timeout).items():
            if exc is None:
                report.add("create", f"topic {name}", "created")
            else:
                raise RuntimeError(f"creating Kafka topic {name} failed: {exc}") from exc

    present = [t for t in topics if t["name"] in existing]
    for t in present:
        _reconcile_partitions(admin, t, existing[t["name"]], replication_factor, report, timeout, dry_run)
    _reconcile_configs(admin, present, report, timeout, dry_run)
    return report


def _reconcile_partitions(admin, t, actual, replication_factor, report, timeout, dry_run) -> None:
    name, wanted = t["name"], t["partitions"]
    target = f"topic {name} partitions"
    if actual["replication"] != replication_factor:
        report.add(
            "drift",
            f"topic {name} replication",
            f"is {actual['replication']}, config asks {replication_factor}; change it with a partition reassignment",
        )
    if actual["partitions"] == wanted:
        report.add("unchanged", target, str(wanted))
    elif actual["partitions"] > wanted:
        report.add("drift", target, f"has {actual['partitions']}, spec says {wanted}; partitions cannot shrink")
    elif dry_run:
        report.add("update", target, f"would grow {actual['partitions']} -> {wanted}")
    else:
        futures = admin.create_partitions([NewPartitions(name, wanted)], request_timeout=timeout)
        exc = _wait(futures, timeout)[name]
        if exc is None:
            report.add("update", target, f"grown {actual['partitions']} -> {wanted}")
        elif _unsupported(exc):
            report.add("unsupported", target, f"has {actual['partitions']}, spec says {wanted}; broker: {exc}")
        else:
            raise RuntimeError(f"growing Kafka topic {name} failed: {exc}") from exc


def _reconcile_configs(admin, topics, report, timeout, dry_run) -> None:
    actual = topic_configs(admin, [t["name"] for t in topics], timeout)
    for t in topics:
        wanted = {k: str(v) for k, v in t.get("configs", {}).items()}
        current = actual.get(t["name"], {})
        differ = {k: v for k, v in wanted.items() if current.get(k) != v}
        target = f"topic {t['name']} configs"
        if not differ:
            report.add("unchanged", target)
            continue
        detail = ", ".join(f"{k}: {current.get(k, '<default>')} -> {v}" for k, v in differ.items())
        if dry_run:
            report.add("update", target, f"would set {detail}")
            continue
        resource = ConfigResource(
            ConfigResource.Type.TOPIC,
            t["name"],
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in differ.items()
            ],
        )
        futures = admin.incremental_alter_configs([resource], request_timeout=timeout)
        exc = next(iter(_wait(futures, timeout).values()))
        if exc is None:
            report.add("update", target, f"set {detail}")
        elif _unsupported(exc):
            report.add("unsupported", target, f"{detail}; broker: {exc}")
        else:
            raise RuntimeError(f"altering configs of Kafka topic {t['name']} failed: {exc}") from exc


def verify(admin: AdminClient, spec: dict[str, Any], *, replication_factor: int, timeout: float = 30.0) -> StoreReport:
    """What a dry run would still change, reported as missing or drifted."""
    plan = bootstrap(admin, spec, replication_factor=replication_factor, timeout=timeout, dry_run=True)
    return plan.as_verification()
