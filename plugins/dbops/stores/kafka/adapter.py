"""The Kafka adapter: topic definitions and consumer group offsets, for the whole life of a backup.

One series (``None``): the cluster of connection ``connections.kafka``, reached through
``links.kafka_admin`` (a confluent-kafka AdminClient, kept referenced until its futures
resolve). No Airflow import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaException

from dbops.backup.adapter import (
    DrillComparison,
    DrillEnvironmentError,
    LogFn,
    RestorePlan,
    RestoreRequest,
    SingleSeriesAdapter,
)
from dbops.backup.restore import DRILL_PREFIX
from dbops.stores.kafka.backup import TOPICS_FILE, KafkaBackup, compare_topics, load_file, topic_definitions
from dbops.stores.kafka.recovery import check_topics, drill_kafka, plan_kafka, restore_kafka

if TYPE_CHECKING:
    from dbops.backup.adapter import Links
    from dbops.backup.repository import Backup
    from dbops.config import DbopsConfig


class KafkaAdapter(SingleSeriesAdapter):
    store = "kafka"

    def __init__(self, config: DbopsConfig, links: Links) -> None:
        super().__init__(config, links)
        self.conn_id = config.connections.kafka
        self.timeout = config.kafka.request_timeout_s

    def _admin(self):
        return self.links.kafka_admin(self.conn_id)

    # ------------------------------------------------------------------ backup

    def series_backup(self, subject: str | None) -> KafkaBackup:
        self.check_series(subject)
        return KafkaBackup(self._admin, timeout=self.timeout)

    # ------------------------------------------------------------------ restore

    def check_request(self, request: RestoreRequest) -> None:
        check_topics(request.topics)

    def plan_restore(self, backup: Backup, request: RestoreRequest, log: LogFn) -> RestorePlan:
        """The topics to recreate (missing ones) and to compare (existing ones), and whether
        consumer group offsets will be set (``confirm_overwrite`` names the Kafka connection)."""
        target = self.conn_id
        if request.target:
            log(
                f"target {request.target!r} ignored for kafka: topics are recreated under their own names "
                f"on the cluster of connection {target!r}"
            )
        checked = plan_kafka(backup, topics=request.topics, target=target, confirm=request.confirm)
        selected = checked["topics"]
        admin = self._admin()
        existing = topic_definitions(admin, self.timeout, include_internal=True, names=selected)
        wanted = load_file(backup.path, TOPICS_FILE, "topics_file")["topics"]
        differing = compare_topics({t: wanted[t] for t in existing}, existing)
        missing = [t for t in selected if t not in existing]
        actions = []
        if missing:
            actions.append(
                f"create {len(missing)} topic(s) with their partitions and configs: {', '.join(missing[:20])}"
            )
        if existing:
            actions.append(
                f"leave {len(existing)} existing topic(s) as they are (compared, never altered): "
                f"{', '.join(sorted(existing)[:20])}"
            )
        if checked["offsets"]:
            actions.append("set the backup's committed offsets on consumer groups without active members")
        else:
            actions.append(
                f"report consumer group offsets only (confirm_overwrite {target!r} sets them on idle groups)"
            )
        for line in actions:
            log(f"plan: {line}")
        return RestorePlan(
            store=self.store,
            subject=None,
            backup_id=backup.backup_id,
            source=None,
            target=target,
            exists=bool(existing),
            already=bool(selected) and not missing and not differing,
            overwrite=checked["offsets"],
            actions=actions,
            details={"topics": list(request.topics), "selected": selected, "offsets": checked["offsets"]},
        )

    def restore(self, backup: Backup, plan: RestorePlan, log: LogFn) -> dict[str, Any]:
        admin = self._admin()  # referenced until every future has resolved
        return restore_kafka(
            admin,
            backup,
            topics=tuple(plan.details.get("topics") or ()),
            target=plan.target,
            confirm=plan.target if plan.overwrite else "",
            timeout=self.timeout,
            log=log,
        )

    def compare(self, expected: dict[str, Any], actual: dict[str, Any]) -> tuple[list[str], list[str]]:
        return compare_topics(expected.get("topics", {}), actual.get("topics", {})), []

    # ------------------------------------------------------------------ drill

    def drill_target(self, backup: Backup) -> str:
        return f"{self.conn_id}: topics {DRILL_PREFIX}{backup.backup_id.lower()}_*"

    def drill(self, backup: Backup, found: DrillComparison, log: LogFn) -> None:
        admin = self._admin()
        try:
            admin.list_topics(timeout=self.timeout)
        except KafkaException as exc:  # the broker is not reachable: nothing was judged
            raise DrillEnvironmentError(f"Kafka cluster of connection {self.conn_id!r} not reachable: {exc}") from exc
        drill_kafka(lambda: admin, timeout=self.timeout, log=log)(backup, found)
