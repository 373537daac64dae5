"""The summary of a finished dbops DAG run, as an alert text and as an event (pure Python,
no Airflow import).

:class:`RunFacts` is what the DAG callbacks could read about the run (see
``dbops.run_notifiers``); :func:`run_event` turns it into the event published to Kafka and
Mongo. The event follows the platform's log records (``system_logs``: timestamp, level,
service, message, details); the run itself is in ``details``::

    {"id": "...", "timestamp": "2026-11-22T02:03:04Z", "level": "INFO", "service": "dbops",
     "event": "dag_run_summary", "message": "dbops_nightly_backup ...: success, 2 backups ...",
     "details": {"dag": ..., "run": ..., "outcome": "success", "stores": ["redis"],
                 "total_bytes": ..., "duration_s": ..., "backups": [...], "tasks": [...], ...}}

Nothing secret goes in: backups are described by the fields of their task result that
are listed in :data:`BACKUP_FIELDS`, other task results only by their ``seconds``.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dbops.tools import human_bytes

SERVICE = "dbops"
EVENT_TYPE = "dag_run_summary"
OUTCOMES = ("success", "failed")
# Task states that mean the run did not do what it should have.
FAILED_STATES = ("failed", "upstream_failed")
# What a backup task returns (dbops.backup.runner.BackupOutcome) and the event keeps of it.
BACKUP_FIELDS = ("store", "subject", "backup_id", "total_bytes", "seconds", "reused", "compression")


@dataclass(frozen=True)
class TaskFacts:
    """One task instance at the end of the run; ``result`` is its return value (XCom), if read."""

    task_id: str
    state: str | None
    map_index: int | None = None  # None: not a mapped task
    result: Any = None

    @property
    def name(self) -> str:
        return self.task_id if self.map_index is None else f"{self.task_id}[{self.map_index}]"


@dataclass(frozen=True)
class RunFacts:
    """What is known about a finished run. ``problems`` says what could not be read."""

    dag_id: str
    run_id: str
    outcome: str
    run_type: str | None = None
    logical_date: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    reason: str | None = None
    tasks: tuple[TaskFacts, ...] = ()
    problems: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {list(OUTCOMES)}, got {self.outcome!r}")
        if not self.dag_id or not self.run_id:
            raise ValueError("a run summary needs a dag_id and a run_id")

    @property
    def failed_tasks(self) -> list[str]:
        return [t.name for t in self.tasks if t.state in FAILED_STATES]

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return round((self.ended_at - self.started_at).total_seconds(), 3)

    @property
    def backups(self) -> list[dict[str, Any]]:
        """The backups this run made (or found already made by it), from the task results."""
        found = []
        for task in self.tasks:
            backup = backup_of(task.result)
            if backup is not None:
                found.append({"task": task.name, **backup})
        return found


def split_state_key(key: str, task_ids: Iterable[str]) -> tuple[str, int | None]:
    """Airflow's task-state keys: ``task_id`` for a task, ``task_id_<map index>`` for a mapped one."""
    known = set(task_ids)
    if key in known:
        return key, None
    task_id, _, index = key.rpartition("_")
    if task_id in known and index.isdigit():
        return task_id, int(index)
    return key, None


def backup_of(result: Any) -> dict[str, Any] | None:
    """The backup described by a backup task's result, or None for any other result."""
    if not isinstance(result, Mapping):
        return None
    if not all(k in result for k in ("store", "backup_id", "total_bytes", "seconds")):
        return None
    return {k: result.get(k) for k in BACKUP_FIELDS}


def _seconds(result: Any) -> float | None:
    if isinstance(result, Mapping) and isinstance(result.get("seconds"), (int, float)):
        return float(result["seconds"])
    return None


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: run times must carry a timezone")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def headline(facts: RunFacts) -> str:
    """One line: which run, how it ended, what it produced or which tasks failed."""
    parts = [f"{facts.dag_id} run {facts.run_id}: {facts.outcome}"]
    backups = facts.backups
    if backups:
        total = sum(int(b["total_bytes"] or 0) for b in backups)
        parts.append(f"{len(backups)} backup{'s' if len(backups) != 1 else ''}, {human_bytes(total)}")
    if facts.failed_tasks:
        parts.append("failed: " + ", ".join(facts.failed_tasks))
    if facts.duration_s is not None:
        parts.append(f"in {facts.duration_s:.1f}s")
    return "; ".join(parts)


def event_id(facts: RunFacts, timestamp: datetime) -> str:
    """Stable for one end of one run (a repeated callback replaces, a cleared and rerun run adds)."""
    return f"{facts.dag_id}:{facts.run_id}:{facts.outcome}:{_iso(facts.ended_at or timestamp)}"


def run_event(facts: RunFacts, timestamp: datetime) -> dict[str, Any]:
    """The run-summary event (JSON-ready: times as ISO 8601 UTC strings)."""
    backups = facts.backups
    details: dict[str, Any] = {
        "dag": facts.dag_id,
        "run": facts.run_id,
        "run_type": facts.run_type,
        "logical_date": _iso(facts.logical_date),
        "outcome": facts.outcome,
        "reason": facts.reason,
        "started_at": _iso(facts.started_at),
        "ended_at": _iso(facts.ended_at),
        "duration_s": facts.duration_s,
        "stores": sorted({b["store"] for b in backups}),
        "total_bytes": sum(int(b["total_bytes"] or 0) for b in backups),
        "backups": backups,
        "failed_tasks": facts.failed_tasks,
        "task_states": dict(sorted(Counter(str(t.state) for t in facts.tasks).items())),
        "tasks": [
            {"task": t.task_id, "map_index": t.map_index, "state": t.state, "seconds": _seconds(t.result)}
            for t in facts.tasks
        ],
    }
    if facts.problems:
        details["problems"] = list(facts.problems)
    return {
        "id": event_id(facts, timestamp),
        "timestamp": _iso(timestamp),
        "level": "INFO" if facts.outcome == "success" else "ERROR",
        "service": SERVICE,
        "event": EVENT_TYPE,
        "message": headline(facts),
        "details": details,
    }


def mongo_document(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event as a ``system_logs`` document: ``_id`` the event id, ``timestamp`` a BSON date."""
    document = {k: v for k, v in event.items() if k != "id"}
    document["_id"] = event["id"]
    document["timestamp"] = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    return document


def alert_subject(facts: RunFacts) -> str:
    return f"[dbops] {facts.dag_id} {facts.outcome}: run {facts.run_id}"


def alert_html(facts: RunFacts) -> str:
    """A short e-mail body: the headline and the facts, escaped (no template syntax survives)."""
    rows = [
        ("DAG", facts.dag_id),
        ("run", facts.run_id),
        ("outcome", facts.outcome),
        ("reason", facts.reason or ""),
        ("started", _iso(facts.started_at) or "unknown"),
        ("ended", _iso(facts.ended_at) or "unknown"),
        ("failed tasks", ", ".join(facts.failed_tasks) or "none"),
    ]
    for b in facts.backups:
        rows.append((f"backup {b['store']}", f"{b['backup_id']} ({human_bytes(int(b['total_bytes'] or 0))})"))
    rows += [("not known", p) for p in facts.problems]
    cells = "".join(f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    # Jinja delimiters are escaped too: the notifier must never evaluate text from a run.
    body = f"<p>{html.escape(headline(facts))}</p><table>{cells}</table>"
    return body.replace("{", "&#123;").replace("}", "&#125;")


def webhook_payload(facts: RunFacts) -> dict[str, Any]:
    """The JSON POSTed to the alert webhook (the same keys as the alerts of dbops checks)."""
    return {
        "source": SERVICE,
        "dag_id": facts.dag_id,
        "task_id": None,
        "run_id": facts.run_id,
        "outcome": facts.outcome,
        "failed_tasks": facts.failed_tasks,
        "message": headline(facts),
    }
