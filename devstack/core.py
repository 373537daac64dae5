"""Shared machinery of the local store stack: state folder, secrets, processes.

Every service keeps its data, log and PID file under ``<state>/<service>/`` where
``<state>`` is ``$DBOPS_DEVSTACK_DIR`` (default: ``.devstack/`` in the repository).
A service is stopped only through its own PID file, and only when the process
behind that PID still runs the program the service started (PIDs are reused).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def state_dir() -> Path:
    return Path(os.environ.get("DBOPS_DEVSTACK_DIR", REPO / ".devstack")).resolve()


def log(message: str) -> None:
    print(f"[devstack] {message}", flush=True)


class DevstackError(RuntimeError):
    pass


# --------------------------------------------------------------------------- secrets


def load_secrets() -> dict[str, str]:
    """Passwords and keys of the local stack, created once, kept 0600, never printed."""
    path = state_dir() / "secrets.json"
    data: dict[str, str] = {}
    if path.exists():
        data = json.loads(path.read_text())
    return data


def secret(name: str) -> str:
    """Return the named secret, generating (and persisting) it on first use."""
    import fcntl

    path = state_dir() / "secrets.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = load_secrets()
        if name not in data:
            data[name] = secrets.token_urlsafe(24)
            write_private(path, json.dumps(data, indent=2))
    return data[name]


def write_private(path: Path, text: str, mode: int = 0o600) -> Path:
    """Write a file readable by its owner only (atomic replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- installs

_APT_UPDATED = False


def apt_install(*packages: str) -> None:
    """Install Debian packages that are missing (``apt-get update`` once per process)."""
    global _APT_UPDATED
    missing = [p for p in packages if not _dpkg_installed(p)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise DevstackError(f"need root to apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _APT_UPDATED:
        log("apt-get update")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        _APT_UPDATED = True
    log(f"apt-get install {' '.join(missing)}")
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def _dpkg_installed(package: str) -> bool:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return result.returncode == 0 and "install ok installed" in result.stdout


def ensure_user(name: str, home: Path | None = None, shell: str = "/usr/sbin/nologin") -> None:
    """Create a system user for a service that must not run as root."""
    if subprocess.run(["id", "-u", name], capture_output=True).returncode == 0:
        return
    args = ["useradd", "-s", shell]
    args += ["-d", str(home), "-m"] if home else ["-M"]
    subprocess.run([*args, name], check=True)


def site_packages() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["purelib"])


# --------------------------------------------------------------------------- processes


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # readiness probes raise while the server starts
            last_error = exc
        time.sleep(interval)
    raise DevstackError(f"{what} not ready after {timeout:.0f}s (last error: {last_error})")


class Process:
    """One long-running process of a service, tracked by a PID file."""

    def __init__(self, service_dir: Path, name: str, marker: str):
        self.pidfile = service_dir / f"{name}.pid"
        self.logfile = service_dir / f"{name}.log"
        # a string that must appear in /proc/PID/cmdline for the PID to be ours
        self.marker = marker

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError):
            return None
        return pid if self.marker in cmdline else None

    def running(self) -> bool:
        return self.pid() is not None

    def spawn(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> int:
        """Start ``argv`` detached from this process, output to the log file."""
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
        with open(self.logfile, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        pid = proc.pid
        if user:
            # runuser forks the real program; record the child so stop() reaches it
            pid = _child_or_self(pid)
        self.pidfile.write_text(f"{pid}\n")
        return pid

    def adopt(self, pid: int) -> None:
        """Record a PID started by a daemonising program."""
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.pidfile.write_text(f"{pid}\n")

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``. Returns True when something was stopped.

        A process spawned here leads its own process group (``start_new_session``): the
        whole group is signalled, so children (Airflow's scheduler, workers...) end too.
        """
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        group = os.getpgid(pid) if os.getpgid(pid) == pid else None
        _signal(pid, group, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(pid, group):
            time.sleep(0.2)
        if _group_alive(pid, group):
            _signal(pid, group, signal.SIGKILL)
            while _group_alive(pid, group):
                time.sleep(0.1)
        self.pidfile.unlink(missing_ok=True)
        return True


def _signal(pid: int, group: int | None, sig: int) -> None:
    try:
        if group is not None:
            os.killpg(group, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pid: int, group: int | None) -> bool:
    if group is None:
        return _alive(pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == group and _alive(int(entry.name)):
            return True
    return False


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone between the listing and the read
        return False
    # a zombie child of ours counts as gone
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def _child_or_self(pid: int, timeout: float = 3.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            return pid
        if children:
            return int(children[0])
        time.sleep(0.05)
    return pid


def which_or_fail(program: str, hint: str) -> str:
    path = shutil.which(program)
    if not path:
        raise DevstackError(f"{program} not found: {hint}")
    return path


class Service:
    """A local store. Subclasses fill in install/start/ready/stop/connections."""

    name: str = ""
    port: int = 0

    def __init__(self) -> None:
        self.dir = state_dir() / self.name

    def install(self) -> None:
        """Install what is missing (Debian packages, users, wrappers)."""

    def start(self) -> None:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def running(self) -> bool:
        raise NotImplementedError

    def connections(self) -> dict[str, dict]:
        """Airflow connections (conn_id -> JSON connection dict) this service provides."""
        return {}

    def environment(self) -> dict[str, str]:
        """Extra environment variables (besides connections) for Airflow and tests."""
        return {}

    def refresh(self) -> None:
        """Bring up to date what ``install`` set up beside a running server (tool links)."""

    def up(self) -> None:
        if self.running() and self.ready():
            self.refresh()
            log(f"{self.name}: already running on 127.0.0.1:{self.port}")
            return
        self.install()
        self.dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.start()
        log(f"{self.name}: ready on 127.0.0.1:{self.port} ({time.monotonic() - started:.1f}s)")
