"""The WAL receiver of the local stack: ``python -m dbops.pitr.receiver`` against the local
PostgreSQL, streaming into the devstack backup repository (``<state>/backups/postgres_wal/``).

It connects as the replication role ``dbops_replication`` (created by the postgres service);
its password reaches libpq only through ``<state>/walreceiver/pgpass`` (0600, PGPASSFILE).
Log: ``<state>/walreceiver/receiver.log``. Ready when ``receiver.json`` shows a fresh heartbeat
in state ``streaming``. Start it after postgres (``SERVICES`` order does that).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from devstack.core import (
    REPO,
    DevstackError,
    Process,
    Service,
    secret,
    state_dir,
    wait_until,
    write_private,
)
from devstack.pgclient import ensure_client_tools
from devstack.services.postgres import CLIENT_TOOLS, REPLICATION_ROLE, Postgres, pg_bin

MODULE = "dbops.pitr.receiver"
# a heartbeat (rewritten every 2 s) older than this is a receiver that does not run
HEARTBEAT_FRESH_S = 15.0


def passfile_line(host: str, port: int, user: str, password: str) -> str:
    """One libpq passfile line (``:`` and ``\\`` escaped)."""

    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:")

    return f"{escape(host)}:{port}:*:{escape(user)}:{escape(password)}\n"


def receiver_environment(*, backup_root: Path, host: str, port: int, user: str, passfile: Path) -> dict[str, str]:
    """The receiver's environment: ours minus any password, plus libpq's address and passfile,
    and the stack's PostgreSQL client tools (pg_receivewal 16.14) first on PATH."""
    client_bin = ensure_client_tools(CLIENT_TOOLS, server_bin=pg_bin())
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGDATABASE", "PGSERVICE")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "plugins"), env.get("PYTHONPATH")])),
            "PATH": f"{client_bin}{os.pathsep}{env.get('PATH', '')}",
            "DBOPS_BACKUP__ROOT": str(backup_root),
            "PGHOST": host,
            "PGPORT": str(port),
            "PGUSER": user,
            "PGPASSFILE": str(passfile),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class WalReceiver(Service):
    name = "walreceiver"
    # the server it streams from (it listens on nothing itself)
    port = Postgres.port

    def __init__(self) -> None:
        super().__init__()
        self.passfile = self.dir / "pgpass"
        # the repository Airflow's tasks use (stack_environment in devstack/__main__.py)
        self.backup_root = state_dir() / "backups"
        self.process = Process(self.dir, "receiver", marker=f"-m {MODULE}")

    @property
    def status_path(self) -> Path:
        return self.backup_root / "postgres_wal" / "receiver.json"

    def install(self) -> None:
        ensure_client_tools(CLIENT_TOOLS, server_bin=pg_bin())

    def start(self) -> None:
        if not Postgres().ready():
            raise DevstackError("walreceiver: the postgres service is not running (start it first)")
        if not self.running():
            write_private(
                self.passfile, passfile_line("127.0.0.1", self.port, REPLICATION_ROLE, secret("replication_password"))
            )
            self.backup_root.mkdir(mode=0o700, parents=True, exist_ok=True)
            env = receiver_environment(
                backup_root=self.backup_root,
                host="127.0.0.1",
                port=self.port,
                user=REPLICATION_ROLE,
                passfile=self.passfile,
            )
            self.process.spawn([sys.executable, "-m", MODULE], env=env, cwd=self.dir)
        try:
            wait_until(self.ready, timeout=30, what="walreceiver")
        except DevstackError:
            status = self.status() or {}
            reason = status.get("error") or f"state {status.get('state', 'unknown')}"
            raise DevstackError(f"walreceiver is not streaming: {reason} (log: {self.process.logfile})") from None

    def status(self) -> dict | None:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return None

    def ready(self) -> bool:
        status = self.status()
        if not self.running() or not status or status.get("state") != "streaming":
            return False
        heard = datetime.fromisoformat(str(status["heartbeat_at"]).replace("Z", "+00:00"))
        return (datetime.now(UTC) - heard).total_seconds() < HEARTBEAT_FRESH_S

    def running(self) -> bool:
        return self.process.running()

    def stop(self) -> None:
        # SIGTERM: the receiver stops pg_receivewal (which fsyncs its .partial) and seals what completed
        self.process.stop(timeout=30)
