"""A scratch PostgreSQL cluster set up for WAL streaming, and WAL receivers streaming from it.

One cluster per test session (``Postgres(name="postgres-pitr", port=55446)``: devstack's own
server code, the replication settings and role included); each test gets its own receiver
(``python -m dbops.pitr.receiver`` as a real subprocess), backup root and replication slot::

    cluster = PitrCluster.up()                 # or the session fixture ``pitr_cluster``
    stack = cluster.stack(tmp_path / "backups")  # or the fixture ``pitr_stack``
    stack.start_receiver(); stack.wait_streaming()
    segment = stack.switch_wal()               # the name of the segment it completed
    entry = stack.wait_sealed(segment)         # its catalog entry, once sealed
    stack.kill_receiver()                      # SIGKILL (receiver and pg_receivewal)
    stack.kill_server(); stack.start_server()  # SIGKILL the postmaster, start it again
    with stack.connect("postgres") as conn: ...  # psycopg, autocommit, superuser

Endpoint facts: ``cluster.host``, ``.port``, ``.superuser``/``.superuser_password``,
``.replication_user``/``.replication_password``, ``.system_identifier()``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from devstack.core import port_open, secret
from devstack.services.postgres import REPLICATION_ROLE, Postgres
from devstack.services.postgres import USER as PG_USER
from devstack.services.walreceiver import MODULE, passfile_line, receiver_environment

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO / "plugins"))

from dbops.pitr.wal import WAL_DIR, WalArchive, WalEntry, parse_lsn, segment_name, segno_of  # noqa: E402

# not used by any devstack service (postgres 55432) or the benchmarks (55442, 55443). Two test
# sessions at once (two engineers on one machine) each need their own: DBOPS_TEST_PITR_PORT=55448
# gives a second cluster ``postgres-pitr-55448`` (the crash test kills the server it uses).
PITR_PORT = int(os.environ.get("DBOPS_TEST_PITR_PORT", "55446"))
PITR_NAME = "postgres-pitr" if PITR_PORT == 55446 else f"postgres-pitr-{PITR_PORT}"
_SEGMENT_NAME = re.compile(r"^[0-9A-F]{24}$")


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; that value. AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # the server restarting, a file being replaced
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last error: {last_error})")


class PitrCluster:
    """The scratch server: started by :meth:`up` (reused when it already runs)."""

    host = "127.0.0.1"
    superuser = "postgres"
    replication_user = REPLICATION_ROLE

    def __init__(self, name: str = PITR_NAME, port: int = PITR_PORT) -> None:
        self.server = Postgres(name=name, port=port)
        self.port = port
        self.started_here = False

    @classmethod
    def up(cls, name: str = PITR_NAME, port: int = PITR_PORT) -> PitrCluster:
        cluster = cls(name, port)
        if not cluster.server.running() and port_open(port):
            raise RuntimeError(f"127.0.0.1:{port} is taken by something else than the {name} cluster")
        cluster.started_here = not cluster.server.running()
        if cluster.started_here:
            cluster.server.up()  # install (initdb, settings), start, database, replication role
        else:
            cluster.server.start()  # already up: only the database and the role (idempotent)
        return cluster

    def down(self) -> None:
        self.server.stop()

    @property
    def superuser_password(self) -> str:
        return secret("postgres_password")

    @property
    def replication_password(self) -> str:
        return secret("replication_password")

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.superuser,
            password=self.superuser_password,
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )

    def connection_env(self, admin_conn: str, replication_conn: str) -> dict[str, str]:
        """Airflow connections (``AIRFLOW_CONN_*``) of this cluster: its superuser as
        ``admin_conn``, its replication role as ``replication_conn``."""

        def uri(login: str, password: str) -> str:
            return json.dumps(
                {
                    "conn_type": "postgres",
                    "host": self.host,
                    "port": self.port,
                    "login": login,
                    "password": password,
                    "schema": "postgres",
                }
            )

        return {
            f"AIRFLOW_CONN_{admin_conn.upper()}": uri(self.superuser, self.superuser_password),
            f"AIRFLOW_CONN_{replication_conn.upper()}": uri(self.replication_user, self.replication_password),
        }

    def fresh_database(self, name: str, *statements: str) -> None:
        """Drop and create database ``name``, then run ``statements`` in it (its tables)."""
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with self.connect(name) as conn:
            for statement in statements:
                conn.execute(statement)

    def system_identifier(self) -> str:
        with self.connect() as conn:
            return str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.server.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def stack(self, backup_root: Path, *, slot: str | None = None, compression: str = "gzip:1") -> PitrStack:
        return PitrStack(
            self, backup_root, slot=slot or f"dbops_pitr_test_{uuid.uuid4().hex[:8]}", compression=compression
        )

    def writer(self, dbname: str = "postgres", table: str = "pitr_test_writer") -> RowWriter:
        return RowWriter(self, dbname, table)


class RowWriter:
    """A thread inserting rows (one commit each) until stopped; survives a server restart
    (reconnects). ``with cluster.writer() as writer: ...``; ``writer.rows``: rows committed."""

    def __init__(self, cluster: PitrCluster, dbname: str, table: str) -> None:
        self.cluster, self.dbname, self.table = cluster, dbname, table
        self.rows = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RowWriter:
        with self.cluster.connect(self.dbname) as conn:
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, at timestamptz NOT NULL "
                    "DEFAULT clock_timestamp(), note text NOT NULL)"
                ).format(sql.Identifier(self.table))
            )
        self._thread.start()
        return self

    def _run(self) -> None:
        insert = sql.SQL("INSERT INTO {} (note) VALUES (%s)").format(sql.Identifier(self.table))
        while not self._stop.is_set():
            try:
                with self.cluster.connect(self.dbname) as conn:
                    while not self._stop.is_set():
                        conn.execute(insert, ["x" * 200])
                        self.rows += 1
            except psycopg.Error:
                self.errors += 1  # the server is down: try again shortly
                self._stop.wait(0.2)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class PitrStack:
    """One receiver streaming from the cluster into ``backup_root`` (its own slot)."""

    def __init__(self, cluster: PitrCluster, backup_root: Path, *, slot: str, compression: str) -> None:
        self.cluster, self.backup_root, self.slot, self.compression = cluster, Path(backup_root), slot, compression
        self.user = cluster.replication_user
        self.backup_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.archive = WalArchive(self.backup_root / WAL_DIR)
        self.workdir = self.backup_root.parent / f"receiver-{slot}"
        self.workdir.mkdir(mode=0o700, exist_ok=True)
        self.log_path = self.workdir / "receiver.log"
        self.passfile = self.workdir / "pgpass"
        self.set_login(cluster.replication_user, cluster.replication_password)
        self.process: subprocess.Popen[bytes] | None = None

    def set_login(self, user: str, password: str) -> None:
        """The role the next receiver start connects as, and its password (in the 0600 passfile)."""
        self.user = user
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(passfile_line(self.cluster.host, self.cluster.port, user, password))

    # ---------------------------------------------------------------- endpoint facts

    @property
    def host(self) -> str:
        return self.cluster.host

    @property
    def port(self) -> int:
        return self.cluster.port

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return self.cluster.connect(dbname)

    def environment(self) -> dict[str, str]:
        env = receiver_environment(
            backup_root=self.backup_root,
            host=self.host,
            port=self.port,
            user=self.user,
            passfile=self.passfile,
        )
        env = {k: v for k, v in env.items() if not k.startswith("DBOPS_") or k == "DBOPS_BACKUP__ROOT"}
        env.pop("DBOPS_CONFIG", None)
        env["DBOPS_PITR__SLOT"] = self.slot
        env["DBOPS_PITR__WAL_COMPRESSION"] = self.compression
        return env

    # ---------------------------------------------------------------- the receiver

    def start_receiver(self) -> int:
        assert not self.receiver_running(), "the receiver already runs"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", MODULE],
                env=self.environment(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.process.pid

    def receiver_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def receiver_pids(self) -> list[int]:
        """The receiver and its pg_receivewal (its process group)."""
        if self.process is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == self.process.pid and fields[0] != "Z":
                    pids.append(int(entry.name))
        return pids

    def kill_receiver(self, sig: int = signal.SIGKILL, *, group: bool = True) -> None:
        """Kill the receiver (``group``: and its pg_receivewal in the same instant), wait until gone."""
        assert self.process is not None
        if group:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)
        self.process.wait(timeout=30)
        wait_for(lambda: not self.receiver_pids(), 30, "the receiver's processes to end")

    def stop_receiver(self, timeout: float = 30) -> int | None:
        """SIGTERM (a clean stop); its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_receiver()
            raise

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def secrets_absent_from(self, text: str) -> bool:
        """Neither the replication nor the superuser password appears in ``text``."""
        return self.cluster.replication_password not in text and self.cluster.superuser_password not in text

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status(self) -> dict[str, Any] | None:

        return self.archive.status()

    def wait_streaming(self, timeout: float = 30, *, restarts_above: int | None = None) -> dict[str, Any]:
        """Until the heartbeat says streaming (and, when given, after more than that many restarts)."""

        def streaming() -> dict[str, Any] | None:
            assert self.receiver_running(), f"the receiver exited:\n{self.output()[-3000:]}"
            status = self.status()
            if not status or status.get("state") != "streaming" or status.get("pid") != self.process.pid:
                return None
            if restarts_above is not None and status.get("restarts", 0) <= restarts_above:
                return None
            return status

        return wait_for(streaming, timeout, f"receiver streaming (log:\n{self.output()[-2000:]})")

    def wait_sealed(self, target: str | int, timeout: float = 30) -> WalEntry:
        """Until segment ``target`` (a name), or the one holding the byte before LSN ``target``
        ("0/3000000" or an int, on the server's current timeline), is in the catalog."""
        if isinstance(target, str) and _SEGMENT_NAME.match(target):
            name = target
        else:
            lsn = parse_lsn(target) if isinstance(target, str) else int(target)
            name = segment_name(self.timeline(), segno_of(lsn - 1, self.segment_size()))

        def sealed() -> WalEntry | None:
            return next((e for e in self.archive.entries() if e.name == name), None)

        return wait_for(sealed, timeout, f"{name} sealed (receiver log:\n{self.output()[-2000:]})")

    def segment_size(self) -> int:
        header = self.archive.header()
        return int(header["wal_segment_size"]) if header else 16 * 1024 * 1024

    # ---------------------------------------------------------------- the server

    def switch_wal(self) -> str:
        """Complete the current segment (a WAL record first, so there is one to complete);
        the completed segment's name."""
        with self.connect() as conn:
            conn.execute("SELECT pg_logical_emit_message(false, 'dbops-test', 'switch')")
            return str(conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0])

    def timeline(self) -> int:
        """The timeline the server writes WAL on now."""
        with self.connect() as conn:
            return int(conn.execute("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)").fetchone()[0], 16)

    def new_timeline(self) -> int:
        """End the current timeline the way a point-in-time restore into this cluster does:
        a clean stop, archive recovery to the end of pg_wal (restore_command 'false': no
        archive), promotion to the next timeline. The new timeline."""
        with self.connect() as conn:
            conn.execute("ALTER SYSTEM SET restore_command = 'false'")
            # no read-only connections during recovery: the start returns once promoted
            conn.execute("ALTER SYSTEM SET hot_standby = off")
        self.cluster.server.stop()
        signal_file = self.cluster.server.data / "recovery.signal"
        signal_file.touch()
        shutil.chown(signal_file, PG_USER, PG_USER)
        self.cluster.server.start()
        with self.connect() as conn:
            conn.execute("ALTER SYSTEM RESET restore_command")
            conn.execute("ALTER SYSTEM RESET hot_standby")  # applies at the next start; harmless on a primary
            conn.execute("SELECT pg_reload_conf()")
        return self.timeline()

    def current_lsn(self) -> int:
        with self.connect() as conn:
            return parse_lsn(str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]))

    def kill_server(self) -> None:
        """SIGKILL the postmaster (a crash); wait until its children have noticed and ended."""
        pid = self.cluster.postmaster_pid()
        assert pid, "the cluster is not running"
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not any(_not_zombie(p) for p in children), 30, "the killed server's backends to end")
        # until its parent reaped it: a new postmaster takes a PID still in the table for a live one
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), 60, f"the killed postmaster {pid} to be reaped")

    def start_server(self) -> None:
        """Start the cluster again (crash recovery runs first); ready for connections."""
        self.cluster.server.start()

    def slot_state(self) -> tuple[bool, str | None] | None:
        """(active, restart_lsn) of this stack's slot, None when it does not exist."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT active, restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s", [self.slot]
            ).fetchone()
        return (bool(row[0]), row[1]) if row else None

    def close(self) -> None:
        """Stop the receiver and drop this stack's slot (the server would keep WAL for it)."""
        if self.receiver_running():
            try:
                self.stop_receiver()
            except subprocess.TimeoutExpired:
                pass
        try:
            wait_for(lambda: (self.slot_state() or (False, None))[0] is False, 30, f"slot {self.slot} released")
            with self.connect() as conn:
                conn.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                    [self.slot],
                )
        except (AssertionError, psycopg.Error):
            pass  # the server is down: its next start keeps the slot, a later test drops nothing of ours


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
