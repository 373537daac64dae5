"""Reading the dbops tables for the DB Ops page, in a read-only session.

Over a psycopg 3 connection to the database of the dbops connection (where
``dbops_bootstrap`` created the ``dbops`` schema). Every transaction is read-only
(``include/sql/status/session_settings.sql``), so a bug here cannot write. No Airflow
import.
"""

from __future__ import annotations

from typing import Any

from dbops.config import MonitorSettings
from dbops.maintenance.postgres import fetch_dicts
from dbops.maintenance.sizes import growth
from dbops.sqlfiles import load_sql
from dbops.status import overview

APPLICATION_NAME = "dbops_status_page"
NOT_BOOTSTRAPPED = "table {} does not exist in this database: run dbops_bootstrap first"


def prepare_session(conn, statement_timeout: str = "10s", lock_timeout: str = "2s") -> None:
    conn.execute(
        load_sql("status/session_settings.sql"),
        {"statement_timeout": statement_timeout, "lock_timeout": lock_timeout, "application_name": APPLICATION_NAME},
    )
    conn.commit()


def _ready(conn) -> dict[str, bool]:
    row = fetch_dicts(conn, load_sql("status/tables_ready.sql"), {})[0]
    conn.rollback()
    return row


def latest_maintenance(conn) -> dict[str, Any] | None:
    """The latest maintenance run and its rows (:func:`overview.maintenance_summary`)."""
    if not _ready(conn)["maintenance_report"]:
        raise LookupError(NOT_BOOTSTRAPPED.format("dbops.maintenance_report"))
    runs = fetch_dicts(conn, load_sql("status/latest_maintenance_run.sql"), {})
    rows = fetch_dicts(conn, load_sql("maintenance/journal_run.sql"), {"run_id": runs[0]["run_id"]}) if runs else []
    conn.rollback()
    return overview.maintenance_summary(runs[0] if runs else None, rows)


def table_sizes(conn, settings: MonitorSettings, *, days: int, top: int) -> dict[str, Any]:
    """The chart data: the ``top`` biggest tables of the latest capture over ``days`` days,
    with the monitor's growth rates (:func:`dbops.maintenance.sizes.growth`)."""
    if not _ready(conn)["table_size_history"]:
        raise LookupError(NOT_BOOTSTRAPPED.format("dbops.table_size_history"))
    latest = conn.execute(load_sql("status/latest_capture.sql")).fetchone()[0]
    conn.rollback()
    if latest is None:
        return {**overview.table_size_chart([], [], top), "days": days}
    rates = growth(conn, latest, settings)
    names = [f"{r['schema_name']}.{r['table_name']}" for r in rates[:top]]
    history = fetch_dicts(conn, load_sql("status/size_history.sql"), {"days": days, "tables": names})
    conn.rollback()
    return {**overview.table_size_chart(history, rates, top), "days": days}
