"""Table sizes: capture into ``dbops.table_size_history``, growth, thresholds, report files.

The successor of the daily ``table_sizes.log`` query: every capture is kept (with its
real time), growth is computed by window functions over that history
(``include/sql/monitor/growth.sql``), and the results go to a readable report file and
a Prometheus text file (node_exporter's textfile collector format), both written
atomically. Pure logic over a psycopg connection; no Airflow import.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from dbops.config import MonitorSettings
from dbops.maintenance import render
from dbops.sqlfiles import load_sql

APPLICATION_NAME = "dbops_table_size_monitor"
WINDOWS = ("1d", "7d", "30d")
REPORT_SUBDIR = "table_sizes"
METRICS_SUBDIR = "metrics"
METRICS_FILE = "dbops_table_sizes.prom"
_REPORT_NAME = re.compile(r"^table_sizes_(\d{8}T\d{6}Z)\.txt$")


class HistoryNotReady(RuntimeError):
    """dbops.table_size_history does not exist: the database was not bootstrapped."""


# ----------------------------------------------------------------------------- when to measure


SIZES_REFUSAL = (
    "table sizes can only be measured now, not at a past date, so this run captures nothing. The history "
    "keeps the real capture times, so no growth figure is affected; trigger a run without a logical date "
    "(or with the current time) to measure now."
)


def measurement_refusal(
    logical_date: datetime | None,
    now: datetime,
    max_delay_hours: float,
    *,
    setting: str = "monitor.max_start_delay_hours",
    consequence: str = SIZES_REFUSAL,
) -> str | None:
    """Why a run must not measure (its logical date is in the past), or None.

    A store can only be measured now. A run whose logical date is more than
    ``max_delay_hours`` old (a backfill, a catch-up, a trigger with a past date) would
    record today's state under a past date's run: it measures nothing instead. A run
    without a logical date (a manual trigger in Airflow 3) is current.
    """
    if logical_date is None:
        return None
    delay = now - logical_date
    if delay <= timedelta(hours=max_delay_hours):
        return None
    return (
        f"logical date {logical_date:%Y-%m-%d %H:%M} UTC is {_human_delay(delay)} in the past "
        f"(more than {setting} = {max_delay_hours:g} h): {consequence}"
    )


def _human_delay(delay: timedelta) -> str:
    hours = delay.total_seconds() / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} h"


# ----------------------------------------------------------------------------- capture


def prepare_session(conn, settings: MonitorSettings) -> None:
    conn.execute(
        load_sql("monitor/session_settings.sql"),
        {
            "lock_timeout": settings.lock_timeout,
            "statement_timeout": settings.statement_timeout,
            "application_name": APPLICATION_NAME,
        },
    )
    conn.commit()


def ensure_ready(conn) -> None:
    ready = conn.execute(load_sql("monitor/history_ready.sql")).fetchone()[0]
    conn.rollback()
    if not ready:
        raise HistoryNotReady(
            "table dbops.table_size_history does not exist in this database: run dbops_bootstrap first"
        )


def capture(conn, schemas: list[str], captured_at: datetime | None = None) -> tuple[datetime | None, int]:
    """Append one snapshot of every table of ``schemas`` (one transaction); (time, tables)."""
    with conn.transaction():
        rows = conn.execute(
            load_sql("monitor/capture.sql"), {"captured_at": captured_at, "schemas": schemas}
        ).fetchall()
    return (rows[0][0] if rows else captured_at), len(rows)


def prune_history(conn, days: int) -> int:
    with conn.transaction():
        return conn.execute(load_sql("monitor/prune_history.sql"), {"days": days}).rowcount


# ----------------------------------------------------------------------------- growth


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, Decimal) else value


def growth(conn, captured_at: datetime, settings: MonitorSettings) -> list[dict[str, Any]]:
    """Every table of the capture at ``captured_at`` with sizes, growth per window and days to its limit."""
    params = {
        "captured_at": captured_at,
        "schemas": settings.schemas,
        "default_limit": settings.size_limit_bytes,
        "limits": Jsonb(settings.size_limits),
    }
    with conn.cursor() as cur:
        cur.execute(load_sql("monitor/growth.sql"), params)
        names = [c.name for c in cur.description]
        rows = [{n: _plain(v) for n, v in zip(names, row, strict=True)} for row in cur.fetchall()]
    conn.rollback()
    return rows


# ----------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Alert:
    table: str  # schema.table
    rule: str  # size_limit | growth | days_to_limit
    message: str


def _limit_source(settings: MonitorSettings, name: str) -> str:
    return f"monitor.size_limits[{name!r}]" if name in settings.size_limits else "monitor.size_limit_bytes"


def alerts(rows: list[dict[str, Any]], settings: MonitorSettings) -> list[Alert]:
    """Tables over their size limit, growing too fast, or reaching their limit too soon."""
    found = []
    for r in rows:
        name = f"{r['schema_name']}.{r['table_name']}"
        limit, source = r["limit_bytes"], _limit_source(settings, name)
        if r["total_bytes"] > limit:
            found.append(
                Alert(
                    name,
                    "size_limit",
                    (
                        f"{name} is {render.size(r['total_bytes'])} ({r['total_bytes']} bytes), over its size limit "
                        f"{render.size(limit)} ({source} = {limit})"
                    ),
                )
            )
            continue  # days_to_limit is 0: one alert per table says it
        g1 = r["growth_1d"]
        if settings.max_growth_bytes_per_day is not None and g1 is not None and g1 > settings.max_growth_bytes_per_day:
            found.append(
                Alert(
                    name,
                    "growth",
                    (
                        f"{name} grew {render.size(g1)}/day over the last {r['span_1d_days']:g} days "
                        f"({g1:.0f} bytes/day), above monitor.max_growth_bytes_per_day = "
                        f"{settings.max_growth_bytes_per_day} ({render.size(settings.max_growth_bytes_per_day)}/day)"
                    ),
                )
            )
        days = r["days_to_limit"]
        if settings.alert_days_until_limit is not None and days is not None and days < settings.alert_days_until_limit:
            rate = next(r[f"growth_{w}"] for w in ("7d", "1d", "30d") if r[f"growth_{w}"] is not None)
            found.append(
                Alert(
                    name,
                    "days_to_limit",
                    (
                        f"{name} ({render.size(r['total_bytes'])}) reaches its size limit {render.size(limit)} "
                        f"({source}) in {days:g} days at {render.size(rate)}/day, sooner than "
                        f"monitor.alert_days_until_limit = {settings.alert_days_until_limit:g} days"
                    ),
                )
            )
    return found


# ----------------------------------------------------------------------------- outputs

REPORT_HEADERS = (
    "table",
    "total",
    "heap",
    "index",
    "toast",
    "live",
    "dead",
    "/day 1d",
    "/day 7d",
    "/day 30d",
    "limit",
    "days to limit",
)


def _growth_cell(value: float | None) -> str:
    if value is None:
        return "-"
    return ("+" if value > 0 else "") + render.size(value)


def render_report(
    rows: list[dict[str, Any]], found: list[Alert], *, captured_at: datetime, database: str, schemas: list[str]
) -> str:
    lines = [
        f"dbops table sizes of database {database}, captured {captured_at:%Y-%m-%d %H:%M:%S} UTC",
        f"schemas: {', '.join(schemas)}; growth in bytes per day over 1, 7 and 30 days ('-': not enough history yet)",
        "",
        render.table(
            REPORT_HEADERS,
            [
                (
                    f"{r['schema_name']}.{r['table_name']}",
                    render.size(r["total_bytes"]),
                    render.size(r["heap_bytes"]),
                    render.size(r["index_bytes"]),
                    render.size(r["toast_bytes"]),
                    r["live_tuples"],
                    r["dead_tuples"],
                    _growth_cell(r["growth_1d"]),
                    _growth_cell(r["growth_7d"]),
                    _growth_cell(r["growth_30d"]),
                    render.size(r["limit_bytes"]),
                    r["days_to_limit"],
                )
                for r in rows
            ],
            empty="(no tables in these schemas)",
        ),
        "",
        f"total: {len(rows)} tables, {render.size(sum(r['total_bytes'] for r in rows))}",
        "",
        "alerts:" if found else "alerts: none",
        *(f"  - {a.message}" for a in found),
    ]
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float | int) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


_METRICS = [
    ("dbops_table_total_bytes", "Table size with indexes and TOAST (pg_total_relation_size).", "total_bytes"),
    ("dbops_table_heap_bytes", "Table heap size: main, FSM and VM forks.", "heap_bytes"),
    ("dbops_table_index_bytes", "Size of the table's indexes.", "index_bytes"),
    ("dbops_table_toast_bytes", "Size of the table's TOAST table and its index.", "toast_bytes"),
    ("dbops_table_live_tuples", "Estimated live rows (pg_stat_user_tables.n_live_tup).", "live_tuples"),
    ("dbops_table_dead_tuples", "Estimated dead rows (pg_stat_user_tables.n_dead_tup).", "dead_tuples"),
    ("dbops_table_size_limit_bytes", "Configured size limit of the table.", "limit_bytes"),
    (
        "dbops_table_days_until_size_limit",
        "Days until the table reaches its size limit at its growth rate.",
        "days_to_limit",
    ),
]


def render_metrics(rows: list[dict[str, Any]], found: list[Alert], captured_at: datetime) -> str:
    """Prometheus text exposition format (gauges); NULL figures are left out, not zeroed."""
    out: list[str] = []

    def family(name: str, help_text: str, samples: list[str]) -> None:
        out.extend([f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples])

    def labels(r: dict[str, Any], **extra: str) -> str:
        pairs = {"schema": r["schema_name"], "table": r["table_name"], **extra}
        return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in pairs.items()) + "}"

    for name, help_text, column in _METRICS:
        family(name, help_text, [f"{name}{labels(r)} {_number(r[column])}" for r in rows if r[column] is not None])
    family(
        "dbops_table_growth_bytes_per_day",
        "Table growth in bytes per day over the window (1d, 7d, 30d).",
        [
            f"dbops_table_growth_bytes_per_day{labels(r, window=w)} {_number(r[f'growth_{w}'])}"
            for r in rows
            for w in WINDOWS
            if r[f"growth_{w}"] is not None
        ],
    )
    family(
        "dbops_table_size_alerts",
        "Tables over a size or growth threshold at the last capture.",
        [f"dbops_table_size_alerts {len(found)}"],
    )
    family(
        "dbops_table_size_capture_timestamp_seconds",
        "Time of the last capture (Unix seconds).",
        [f"dbops_table_size_capture_timestamp_seconds {_number(round(captured_at.timestamp(), 3))}"],
    )
    return "\n".join(out) + "\n"


def atomic_write(path: Path, text: str, mode: int = 0o640) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, fsync, rename."""
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def report_path(reports_dir: Path, captured_at: datetime) -> Path:
    stamp = captured_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return reports_dir / REPORT_SUBDIR / f"table_sizes_{stamp}.txt"


def metrics_path(reports_dir: Path) -> Path:
    return reports_dir / METRICS_SUBDIR / METRICS_FILE


def prune_reports(reports_dir: Path, days: int, now: datetime) -> list[Path]:
    """Delete report files (only ours, by name) older than ``days``; return what went."""
    folder = reports_dir / REPORT_SUBDIR
    if not folder.is_dir():
        return []
    cutoff = now - timedelta(days=days)
    gone = []
    for path in sorted(folder.iterdir()):
        match = _REPORT_NAME.match(path.name)
        if not match or not path.is_file():
            continue
        taken = datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        if taken < cutoff:
            path.unlink()
            gone.append(path)
    return gone
