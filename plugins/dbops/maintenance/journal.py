"""``dbops.maintenance_report``: one row per action or finding of a maintenance run.

A row is written when an action starts (``finished_at`` NULL) and completed when it
ends, so an action that was interrupted (worker killed, server restarted) stays
visible as "never finished". Reruns of a task append rows; :func:`run_rows` reads the
latest per kind and target. The journal lives in the database of the dbops connection
(where ``dbops_bootstrap`` created the ``dbops`` schema), whichever database is maintained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb

from dbops.sqlfiles import load_sql

# action values besides the maintenance verbs themselves
REPORT = "report"
SKIPPED = "skipped"
FAILED = "failed"
PLANNED = "planned"  # dry run: never stored


class JournalNotReady(RuntimeError):
    """dbops.maintenance_report does not exist: the database was not bootstrapped."""


@dataclass
class Entry:
    """One action or finding, as logged and returned (XCom) by a task."""

    kind: str
    target: str
    action: str
    before_bytes: int | None = None
    after_bytes: int | None = None
    duration_ms: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def note(self) -> str:
        d = self.detail
        parts = [str(d[k]) for k in ("reason", "error") if d.get(k)]
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "action": self.action,
            "before_bytes": self.before_bytes,
            "after_bytes": self.after_bytes,
            "duration_ms": self.duration_ms,
            "detail": self.detail,
        }


class Journal:
    """Writes entries for one DAG run; ``conn`` is an autocommit connection."""

    def __init__(self, conn, run_id: str, *, dry_run: bool = False):
        self.conn = conn
        self.run_id = run_id
        self.dry_run = dry_run
        if not dry_run:
            ensure_ready(conn)

    def start(self, entry: Entry) -> int | None:
        if self.dry_run:
            return None
        row = self.conn.execute(
            load_sql("maintenance/journal_start.sql"),
            {
                "run_id": self.run_id,
                "kind": entry.kind,
                "target": entry.target,
                "action": entry.action,
                "before_bytes": entry.before_bytes,
                "detail": Jsonb(entry.detail),
            },
        ).fetchone()
        return row[0]

    def finish(self, row_id: int | None, entry: Entry) -> None:
        if self.dry_run or row_id is None:
            return
        self.conn.execute(
            load_sql("maintenance/journal_finish.sql"),
            {
                "id": row_id,
                "action": entry.action,
                "after_bytes": entry.after_bytes,
                "duration_ms": entry.duration_ms,
                "detail": Jsonb(entry.detail),
            },
        )

    def record(self, entry: Entry) -> Entry:
        """An entry that is complete when written (a finding, a skip)."""
        self.finish(self.start(entry), entry)
        return entry


def ensure_ready(conn) -> None:
    if not conn.execute(load_sql("maintenance/journal_ready.sql")).fetchone()[0]:
        raise JournalNotReady(
            "table dbops.maintenance_report does not exist in this database: run dbops_bootstrap first"
        )


def run_rows(conn, run_id: str) -> list[dict[str, Any]]:
    """The latest row per kind and target of one run."""
    with conn.cursor() as cur:
        cur.execute(load_sql("maintenance/journal_run.sql"), {"run_id": run_id})
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
