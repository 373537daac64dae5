"""Findings of a maintenance run: unused indexes, estimated bloat, and the run's summary.

Estimates come from catalog statistics only (``pg_class``, ``pg_stats``,
``pg_stat_user_*``): no pgstattuple, which servers without contrib do not have.
They are estimates: a btree that deduplicates many equal keys (PostgreSQL 13+) looks
smaller than the estimate (bloat 0), and a table never analyzed has none (``-``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from dbops.config import MaintenanceSettings
from dbops.maintenance import render
from dbops.maintenance.journal import FAILED, REPORT, Entry, Journal
from dbops.maintenance.postgres import fetch_dicts, index_bloat
from dbops.sqlfiles import load_sql

UNUSED_INDEX = "unused_index"
TABLE_BLOAT = "table_bloat"
INDEX_BLOAT = "index_bloat"


def unused_indexes(conn, schemas: list[str] | None) -> list[dict[str, Any]]:
    """Never-scanned indexes that are not unique, primary, exclusion or constraint-backing."""
    return fetch_dicts(conn, load_sql("maintenance/unused_indexes.sql"), {"schemas": schemas})


def table_bloat(conn, schemas: list[str] | None) -> list[dict[str, Any]]:
    return fetch_dicts(conn, load_sql("maintenance/table_bloat.sql"), {"schemas": schemas})


def stats_age(stats_reset: datetime | None, age_s: int | None) -> str:
    """How long the usage counters have been counting, in words."""
    if stats_reset is None:
        return (
            "statistics never reset (counting since the cluster was created, "
            "or since its last crash recovery, which resets them)"
        )
    days, rest = divmod(int(age_s or 0), 86400)
    return f"statistics reset {stats_reset:%Y-%m-%d %H:%M} UTC, {days} days {rest // 3600} h ago"


def unused_index_entries(conn, schemas: list[str] | None, target: Any) -> tuple[list[Entry], str]:
    """Entries for the unused indexes, and the statistics age sentence they rest on."""
    rows = unused_indexes(conn, schemas)
    age = stats_age(rows[0]["stats_reset"], rows[0]["stats_age_s"]) if rows else ""
    entries = [
        Entry(
            UNUSED_INDEX,
            target(r["schema_name"], r["index_name"]),
            REPORT,
            before_bytes=r["index_bytes"],
            detail={
                "table": r["table_name"],
                "definition": r["definition"],
                "stats_reset": r["stats_reset"].isoformat() if r["stats_reset"] else None,
                "stats_age_s": r["stats_age_s"],
                "reason": f"idx_scan = 0; {age}",
                "suggestion": f"review, then DROP INDEX CONCURRENTLY {r['schema_name']}.{r['index_name']}",
            },
        )
        for r in rows
    ]
    return entries, age


def bloat_entries(conn, settings: MaintenanceSettings, target: Any) -> list[Entry]:
    """Tables and btree indexes whose estimated bloat passes the report bounds."""
    entries = []

    def over(r: dict[str, Any]) -> bool:
        ratio = r["bloat_ratio"]
        return (
            ratio is not None
            and float(ratio) >= settings.report_bloat_ratio
            and (r["bloat_bytes"] or 0) >= settings.report_min_bytes
        )

    for r in table_bloat(conn, settings.schemas):
        if over(r):
            entries.append(
                Entry(
                    TABLE_BLOAT,
                    target(r["schema_name"], r["table_name"]),
                    REPORT,
                    before_bytes=r["heap_bytes"],
                    detail={
                        "bloat_bytes": r["bloat_bytes"],
                        "bloat_ratio": float(r["bloat_ratio"]),
                        "reason": f"estimated {float(r['bloat_ratio']):.0%} bloat",
                    },
                )
            )
    for r in index_bloat(conn, settings.schemas):
        if over(r):
            entries.append(
                Entry(
                    INDEX_BLOAT,
                    target(r["schema_name"], r["index_name"]),
                    REPORT,
                    before_bytes=r["index_bytes"],
                    detail={
                        "table": r["table_name"],
                        "bloat_bytes": r["bloat_bytes"],
                        "bloat_ratio": float(r["bloat_ratio"]),
                        "reason": f"estimated {float(r['bloat_ratio']):.0%} bloat",
                    },
                )
            )
    return entries


def record_all(journal: Journal, entries: Iterable[Entry]) -> list[Entry]:
    return [journal.record(e) for e in entries]


# ----------------------------------------------------------------------------- rendering

ACTION_HEADERS = ("kind", "target", "action", "before", "after", "took", "note")


def entry_row(e: Entry) -> tuple:
    return (
        e.kind,
        e.target,
        e.action,
        render.size(e.before_bytes),
        render.size(e.after_bytes),
        render.duration_ms(e.duration_ms),
        e.note,
    )


def render_entries(title: str, entries: list[Entry]) -> str:
    return f"{title}\n{render.table(ACTION_HEADERS, [entry_row(e) for e in entries])}"


def journal_entries(rows: list[dict[str, Any]]) -> list[Entry]:
    """Journal rows (:func:`dbops.maintenance.journal.run_rows`) as entries; unfinished ones marked."""
    entries = []
    for r in rows:
        detail = dict(r["detail"] or {})
        action = r["action"]
        if r["finished_at"] is None:
            detail["error"] = f"started {r['started_at']:%H:%M:%S} and never finished (task killed?)"
            action = FAILED
        entries.append(
            Entry(r["kind"], r["target"], action, r["before_bytes"], r["after_bytes"], r["duration_ms"], detail)
        )
    return entries


def render_unused(entries: list[Entry], age: str) -> str:
    rows = [(e.target, e.detail["table"], render.size(e.before_bytes), e.detail["definition"]) for e in entries]
    head = "Unused indexes (idx_scan = 0; not unique, primary, exclusion or constraint-backing)"
    if age:
        head += f"\n{age}; scans on standbys are not counted here"
    return f"{head}\n{render.table(('index', 'table', 'size', 'definition'), rows)}"


def render_bloat(entries: list[Entry]) -> str:
    rows = [
        (
            e.kind.replace("_bloat", ""),
            e.target,
            render.size(e.before_bytes),
            render.size(e.detail["bloat_bytes"]),
            f"{e.detail['bloat_ratio']:.0%}",
        )
        for e in entries
    ]
    head = "Estimated bloat (catalog statistics; no pgstattuple)"
    return f"{head}\n{render.table(('relation', 'name', 'size', 'bloat', 'ratio'), rows)}"
