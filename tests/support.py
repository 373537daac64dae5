"""Small helpers shared by test modules."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parent.parent
# the DAG files, one DAG each, named after it
DAG_FILES = sorted(p for p in (REPO / "dags").glob("*.py") if not p.name.startswith("_"))


def task_states(dagrun) -> dict[str, str]:
    """``{task_id: state}`` of a DagRun's task instances; a mapped one as ``task_id[map_index]``."""
    return {
        f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: ti.state
        for ti in dagrun.get_task_instances()
    }


def pg_connect(conn: dict, dbname: str | None = None, autocommit: bool = False) -> psycopg.Connection:
    """A psycopg connection from a devstack connection dict."""
    return psycopg.connect(
        host=conn["host"],
        port=conn["port"],
        user=conn["login"],
        password=conn["password"],
        dbname=dbname or conn["schema"],
        autocommit=autocommit,
    )


def mongo_client(conn: dict):
    """A pymongo client from a devstack connection dict."""
    from pymongo import MongoClient

    return MongoClient(
        host=conn["host"],
        port=conn["port"],
        username=conn.get("login"),
        password=conn.get("password"),
        authSource=conn.get("extra", {}).get("authSource", "admin"),
        serverSelectionTimeoutMS=5000,
    )


def kafka_admin(conn: dict):
    from confluent_kafka.admin import AdminClient

    return AdminClient(dict(conn["extra"]))


class StaticLinks:
    """The Links an adapter gets (:class:`dbops.backup.adapter.Links`), over a plain table of
    endpoints instead of Airflow connections."""

    def __init__(self, endpoints: dict) -> None:
        self.endpoints = endpoints

    def endpoint(self, conn_id: str, store: str):
        return self.endpoints[conn_id]

    def connection_exists(self, conn_id: str) -> bool:
        return conn_id in self.endpoints


class Log:
    """A log function that keeps its lines, for asserting on what a task would log."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def store_drill(store: str, log=None):
    """The store adapter's drill (what ``drill_<store>`` runs), reaching the local stores
    through their Airflow connections (``AIRFLOW_CONN_*`` of the devstack)."""
    from dbops import runtime
    from dbops.config import load_config
    from dbops.registry import adapter

    store_adapter = adapter(store, load_config(), runtime)
    return lambda backup, found: store_adapter.drill(backup, found, log or Log())


# --------------------------------------------------------------------------- backups on disk

META = {"tool": "test-dump", "tool_version": "1.0", "server_version": "1.0", "compression": "none", "details": {}}


def private_backup_root(parent: Path) -> Path:
    """``<parent>/backups``, created 0700 as the backup root must be (a wider one is refused)."""
    root = parent / "backups"
    root.mkdir(mode=0o700)
    return root


def make_backup(
    repo,
    store: str = "redis",
    subject: str | None = None,
    *,
    now: datetime | None = None,
    finished: datetime | None = None,
    took: timedelta = timedelta(minutes=5),
    files: Mapping[str, bytes | int] | None = None,
    run_id: str | None = None,
    dag_id: str = "dbops_nightly_backup",
    logical_date: datetime | None = None,
    meta: Mapping[str, Any] = META,
    checks: Sequence[Any] = (),
    check=None,
):
    """A sealed backup in ``repo`` (a BackupRepository), made through its own begin/seal.

    Begun at ``now`` and sealed ``took`` later, or sealed at ``finished`` (default: now) and begun
    ``took`` before. ``files`` maps a relative path to its bytes, or to a size for random bytes.
    The run defaults to a scheduled one whose logical date is the day before the backup began."""
    if now is not None and finished is not None:
        raise ValueError("make_backup: give now (begun) or finished (sealed), not both")
    if now is None:
        now = (finished or datetime.now(UTC)) - took
    logical_date = logical_date or now - timedelta(days=1)
    files = files if files is not None else {"dump.bin": 4096, "meta/info.json": b'{"ok": true}\n'}
    with repo.begin(
        store,
        subject,
        run_id=run_id or f"scheduled__{logical_date.isoformat()}",
        dag_id=dag_id,
        logical_date=logical_date,
        now=now,
    ) as staging:
        for rel, content in files.items():
            path = staging.path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(content) if isinstance(content, int) else content)
        return staging.seal(meta, checks, check=check, now=now + took)
