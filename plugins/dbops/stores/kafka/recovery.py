"""Kafka restore, comparison and drill (no Airflow import).

A Kafka backup holds topic definitions and consumer group offsets (see
:mod:`dbops.stores.kafka.backup`). Restoring recreates the backup's missing topics under
their own names; topics that exist are compared and reported, never altered or deleted.
Consumer group offsets are set (on idle groups only) when ``confirm_overwrite`` names the
Kafka connection, else only reported. A drill recreates every topic as
``dbops_drill_<backupid>_<topic>``, compares, and deletes them.

The reference of every comparison is the backup's own ``topics.json`` content, recorded
as the backup's description when it was dumped, never a later read of the broker.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from dbops.backup.adapter import DrillComparison, LogFn, RestoreRefused
from dbops.backup.repository import Backup
from dbops.backup.restore import DRILL_PREFIX, _cleanup, confirm_overwrite, drill_topic, finish
from dbops.backup.runner import source_description
from dbops.stores.kafka.backup import (
    TOPICS_FILE,
    compare_topics,
    is_internal,
    load_file,
    restore_offsets,
    restore_topics,
    topic_definitions,
)
from dbops.stores.kafka.bootstrap import _wait, describe_topics

# a topic name Kafka accepts (and that cannot smuggle anything into a log line or a map)
KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def check_topics(topics: Any) -> tuple[str, ...]:
    """The ``topics`` Param as names; RestoreRefused naming the ones Kafka would not accept."""
    if isinstance(topics, str) or not isinstance(topics, (list, tuple)):
        raise RestoreRefused(f"topics must be a list of Kafka topic names, got {topics!r}")
    bad = [t for t in topics if not isinstance(t, str) or not KAFKA_TOPIC.match(t)]
    if bad:
        raise RestoreRefused(f"not Kafka topic names: {bad}")
    return tuple(topics)


def plan_kafka(backup: Backup, *, topics: tuple[str, ...] | list[str], target: str, confirm: str) -> dict[str, Any]:
    """The topics to restore (all non-internal ones of the backup, or ``topics``) and whether
    offsets may be set (``confirm`` names ``target``); RestoreRefused for topics it lacks."""
    document = load_file(backup.path, TOPICS_FILE, "topics_file")
    held = sorted(t for t in document["topics"] if not is_internal(t))
    unknown = sorted(set(topics) - set(document["topics"]))
    if unknown:
        raise RestoreRefused(f"topics {unknown} are not in backup {backup.backup_id} (it holds {held[:20]})")
    confirmed = confirm_overwrite(target=target, reason=None, confirm=confirm)
    return {"topics": sorted(topics) if topics else held, "offsets": confirmed}


def restore_kafka(
    admin, backup: Backup, *, topics: tuple[str, ...] | list[str], target: str, confirm: str, timeout: float, log: LogFn
) -> dict[str, Any]:
    """Recreate the backup's missing topics (all, or ``topics``) under their own names with
    their partitions and configs; existing ones are compared and reported, never altered.
    Consumer group offsets are set (on idle groups only) when ``confirm_overwrite`` names
    the Kafka connection, else only reported."""
    plan = plan_kafka(backup, topics=topics, target=target, confirm=confirm)
    selected = plan["topics"]
    topic_map = {t: t for t in selected} if topics else None
    started = time.monotonic()
    report = restore_topics(admin, backup.path, topic_map=topic_map, log=log, timeout=timeout)
    created = {c.target.removeprefix("topic ") for c in report.changes if c.action == "create"}
    differences = [f"{c.target}: {c.detail}" for c in report.problems if c.action == "missing"]
    notes = [f"{c.target}: {c.detail}" for c in report.changes if c.action == "drift"]
    offsets = restore_offsets(
        admin, backup.path, topic_map=topic_map, dry_run=not plan["offsets"], log=log, timeout=timeout
    )
    if not plan["offsets"] and offsets.modified:
        notes.append(
            f"consumer group offsets not set ({len(offsets.modified)} group(s) would change): set "
            f"confirm_overwrite to {target!r} to set them on idle groups"
        )
    notes += [f"{c.target}: {c.detail}" for c in offsets.problems]
    expected = source_description(backup).get("topics", {})
    actual = topic_definitions(admin, timeout, include_internal=True, names=sorted(created))
    differences += compare_topics({t: expected[t] for t in created if t in expected}, actual)
    return finish(
        {
            "store": "kafka",
            "backup_id": backup.backup_id,
            "source": None,
            "target": target,
            "already": not created and not differences and bool(selected),
            "replaced": False,
            "created_topics": sorted(created),
            "unchanged_topics": sorted(
                c.target.removeprefix("topic ") for c in report.changes if c.action == "unchanged"
            ),
            "offsets": offsets.to_dict()["changes"],
            "seconds": round(time.monotonic() - started, 3),
            "differences": differences,
            "notes": notes,
        },
        log,
    )


def _delete_topics(admin, names: list[str], timeout: float, log: LogFn) -> list[str]:
    """Delete drill topics that exist (only names with the drill prefix); returns those
    that could not be deleted."""
    doomed = [n for n in names if n.startswith(DRILL_PREFIX) and n in describe_topics(admin, timeout)]
    if not doomed:
        return []
    outcome = _wait(admin.delete_topics(doomed, operation_timeout=timeout, request_timeout=timeout), timeout)
    failed = [f"{name}: {exc}" for name, exc in outcome.items() if exc is not None]
    log(f"deleted {len(doomed) - len(failed)} scratch topic(s)" + (f"; not deleted: {failed}" if failed else ""))
    return failed


def _raise_if(failed: list[str]) -> None:
    if failed:
        raise RuntimeError("; ".join(failed))


def drill_kafka(
    admin_factory: Callable[[], Any], *, timeout: float, log: LogFn
) -> Callable[[Backup, DrillComparison], None]:
    """Recreate every topic of the backup as ``dbops_drill_<id>_<topic>``, compare with the
    backup's description, delete them (also when the comparison failed)."""

    def drill(backup: Backup, found: DrillComparison) -> None:
        admin = admin_factory()  # referenced until every future has resolved
        expected = {t: d for t, d in source_description(backup).get("topics", {}).items() if not is_internal(t)}
        held = [t for t in load_file(backup.path, TOPICS_FILE, "topics_file")["topics"] if not is_internal(t)]
        topic_map = {t: drill_topic(t, backup.backup_id) for t in sorted(held)}
        if not topic_map:
            found.notes.append("the backup holds no topics")
        _delete_topics(admin, list(topic_map.values()), timeout, log)  # left by a killed drill
        try:
            report = restore_topics(admin, backup.path, topic_map=topic_map, log=log, timeout=timeout)
            found.differences += [f"{c.target}: {c.detail}" for c in report.problems]
            actual = topic_definitions(admin, timeout, names=list(topic_map.values()))
            found.differences += compare_topics(expected, actual, topic_map=topic_map)
            missing_source = sorted(set(held) - set(expected))
            found.differences += [
                f"topic {t} is in the backup but not in the source description" for t in missing_source
            ]
            found.notes.append(f"{len(topic_map)} topics recreated as {DRILL_PREFIX}{backup.backup_id.lower()}_*")
        finally:
            _cleanup(
                found,
                "drill topics",
                lambda: _raise_if(_delete_topics(admin, list(topic_map.values()), timeout, log)),
                log,
            )

    return drill
