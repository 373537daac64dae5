"""The WAL receiver: a supervised ``pg_receivewal`` plus the sealer, run as a service outside Airflow.

    python -m dbops.pitr.receiver          stream until SIGTERM (a service manager runs it)
    python -m dbops.pitr.receiver --check  exit 0 when the heartbeat is fresh and streaming

Settings: ``dbops.config.load_config()`` (``$DBOPS_CONFIG`` + ``DBOPS_*``) for ``backup.root``,
``pitr.slot`` and ``pitr.wal_compression``; the server from libpq's environment (``PGHOST``,
``PGPORT``, ``PGUSER``); the password only from ``PGPASSFILE`` (a 0600 file): never on a
command line, never in ``PGPASSWORD``, never in a log line.

What it does, in order, on every (re)connection:

1. checks the server over a replication connection and names what is missing (pg_hba
   entry, REPLICATION attribute, ``max_wal_senders``, ``wal_level``, ``max_replication_slots``);
   it changes nothing on the server but the slot;
2. refuses an archive of another system identifier (a new cluster needs a new archive), and a
   server on a lower timeline than the archive's newest, or behind the archive on the same
   timeline (another history): these exit with status 2 after writing the reason into
   ``receiver.json``;
3. creates the physical slot ``pitr.slot`` when it is absent;
4. runs ``pg_receivewal --no-loop`` into ``postgres_wal/segments/`` and restarts it with a
   backoff when it exits, so every reconnection goes through 1-3 again.

A sealer thread seals every completed segment and history file about once a second
(``WalArchive.seal``: compressed, sha256 in the catalog, raw file removed). It never touches a
``.partial`` file: the growing segment stays raw so that a restore to "now" can replay it.
After a timeline switch (pg_receivewal follows it and fetches the ``.history`` file) the old
timeline's last segment stays ``<seg>.partial`` for good: it is kept, never sealed, because the
new timeline's segment of the same number carries the same WAL up to the switch point.

Killing this process (even SIGKILL) loses nothing: pg_receivewal gets SIGTERM from the kernel
(parent-death signal) and fsyncs its ``.partial``; on restart it resumes from the newest
complete segment it finds (a sealed ``.gz`` counts, a raw one not yet sealed is sealed then),
and the server's slot has kept every byte not yet flushed here.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dbops.pitr.wal import (
    WAL_DIR,
    WalArchive,
    WalConflict,
    WalError,
    format_lsn,
    heartbeat_problem,
    parse_lsn,
)

# seconds between heartbeats (receiver.json) and between sealer passes
HEARTBEAT_INTERVAL_S = 2.0
SEAL_INTERVAL_S = 1.0
# a heartbeat older than this is a receiver that is not running (--check, devstack ready())
HEARTBEAT_FRESH_S = 15.0
# restart backoff of pg_receivewal and of a failed server check
BACKOFF_S = (1, 2, 4, 8, 15, 30)
# a run of pg_receivewal this long resets the backoff
STABLE_RUN_S = 30.0
PROBE_CONNINFO = b"replication=true connect_timeout=10 application_name=dbops_walreceiver_probe"
EXIT_REFUSED = 2


class ServerProblem(Exception):
    """The server cannot be streamed from yet (down, misconfigured): retried with a backoff."""


class Refused(Exception):
    """Streaming would mix histories or the set-up is wrong: the receiver stops (exit 2)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def log(event: str, message: str = "", **fields: Any) -> None:
    """One line per event on stdout: ``<time> <event> <message> key=value...``."""
    parts = [format_time(utc_now()), event]
    if message:
        parts.append(message)
    parts += [f"{key}={value}" for key, value in fields.items() if value is not None]
    print(" ".join(parts), flush=True)


# --------------------------------------------------------------------------- the server


@dataclass(frozen=True)
class ServerFacts:
    system_identifier: str
    timeline: int
    xlogpos: int
    wal_level: str
    max_wal_senders: int
    max_replication_slots: int
    segment_size: int
    server_version_num: int
    slot_type: str | None  # None: the slot does not exist


_SIZE_UNITS = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def parse_size(text: str) -> int:
    """A size as SHOW prints it (``16MB``) in bytes."""
    match = re.fullmatch(r"(\d+)\s*(B|kB|MB|GB|TB)?", text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2) or "B"]


def explain_connect_error(message: str, user: str) -> str:
    """What a refused replication connection means, in the operator's terms (libpq's own
    message follows; it never holds a password)."""
    raw = " ".join(message.split())
    rules = [
        (
            "no pg_hba.conf entry for replication connection",
            f"pg_hba.conf has no entry allowing a replication connection for role {user!r} from this address: "
            f"add `host replication {user} <address> scram-sha-256` and reload the server",
        ),
        (
            "permission denied to start WAL sender",
            f"role {user!r} lacks the REPLICATION attribute: ALTER ROLE {user} REPLICATION",
        ),
        (
            "must be superuser or replication role",
            f"role {user!r} lacks the REPLICATION attribute: ALTER ROLE {user} REPLICATION",
        ),
        (
            "exceeds max_wal_senders",
            "max_wal_senders is too small (0 means wal_level minimal or streaming disabled): "
            "set wal_level=replica and max_wal_senders>0, then restart the server",
        ),
        (
            "no password supplied",
            f"no password for role {user!r}: PGPASSFILE needs a line host:port:*:{user}:password (file mode 0600)",
        ),
        (
            "password authentication failed",
            f"the server rejected the password of role {user!r}: check its line in PGPASSFILE",
        ),
        ("does not exist", f"the server does not know role {user!r}: create it (CREATE ROLE {user} LOGIN REPLICATION)"),
        ("Connection refused", "the server does not accept connections (down or another port)"),
        ("timeout expired", "the server did not answer within 10 s"),
    ]
    for needle, meaning in rules:
        if needle in raw:
            return f"{meaning} ({raw})"
    return f"cannot open a replication connection: {raw}"


class ReplicationConnection:
    """A walsender connection (``replication=true``) through libpq: the simple query protocol
    that replication commands need. Address, role and passfile come from libpq's environment."""

    def __init__(self) -> None:
        from psycopg import pq

        self._pq = pq
        self.user = os.environ.get("PGUSER") or _os_user()
        self.conn = pq.PGconn.connect(PROBE_CONNINFO)
        if self.conn.status != pq.ConnStatus.OK:
            message = self.conn.error_message.decode(errors="replace")
            self.conn.finish()
            raise ServerProblem(explain_connect_error(message, self.user))

    def rows(self, command: str) -> list[list[str | None]]:
        result = self.conn.exec_(command.encode())
        if result.status not in (self._pq.ExecStatus.TUPLES_OK, self._pq.ExecStatus.COMMAND_OK):
            message = (result.error_message or self.conn.error_message).decode(errors="replace").strip()
            raise ServerProblem(f"{command.split()[0]} failed: {message}")
        return [
            [None if (value := result.get_value(i, j)) is None else value.decode() for j in range(result.nfields)]
            for i in range(result.ntuples)
        ]

    def show(self, setting: str) -> str:
        return str(self.rows(f"SHOW {setting}")[0][0])

    def close(self) -> None:
        self.conn.finish()

    def __enter__(self) -> ReplicationConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _os_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def probe_server(conn: ReplicationConnection, slot: str) -> ServerFacts:
    """What the server is (IDENTIFY_SYSTEM) and whether it can feed a physical slot."""
    systemid, timeline, xlogpos, _db = conn.rows("IDENTIFY_SYSTEM")[0]
    version = int(conn.show("server_version_num"))
    slot_type = None
    if version >= 150000:  # READ_REPLICATION_SLOT is new in 15
        slot_type = conn.rows(f"READ_REPLICATION_SLOT {_quote_ident(slot)}")[0][0]
    return ServerFacts(
        system_identifier=str(systemid),
        timeline=int(timeline or 0),
        xlogpos=parse_lsn(str(xlogpos)),
        wal_level=conn.show("wal_level"),
        max_wal_senders=int(conn.show("max_wal_senders")),
        max_replication_slots=int(conn.show("max_replication_slots")),
        segment_size=parse_size(conn.show("wal_segment_size")),
        server_version_num=version,
        slot_type=slot_type,
    )


def configuration_problems(facts: ServerFacts, slot: str) -> list[str]:
    """What the server lacks for streaming into a slot (each one names the setting)."""
    problems = []
    if facts.wal_level not in ("replica", "logical"):
        problems.append(f"wal_level is {facts.wal_level!r}: set wal_level=replica (needs a restart)")
    if facts.max_wal_senders < 1:
        problems.append("max_wal_senders is 0: set it above 0 (needs a restart)")
    if facts.max_replication_slots < 1 and facts.slot_type is None:
        problems.append(f"max_replication_slots is 0: slot {slot!r} cannot be created (needs a restart)")
    if facts.slot_type not in (None, "physical"):
        problems.append(
            f"replication slot {slot!r} exists but is {facts.slot_type}: the receiver needs a physical slot"
        )
    return problems


def ensure_slot(conn: ReplicationConnection, facts: ServerFacts, slot: str) -> str | None:
    """Create the physical slot when absent. It reserves WAL from the last checkpoint's redo
    point (PostgreSQL's rule for physical slots), so the archive starts there. The reserved
    LSN when created here ("?" before PostgreSQL 15), None when the slot existed."""
    if facts.slot_type == "physical":
        return None
    try:
        conn.rows(f"CREATE_REPLICATION_SLOT {_quote_ident(slot)} PHYSICAL RESERVE_WAL")
    except ServerProblem as exc:
        if "already exists" in str(exc):  # created meanwhile (or a server older than 15)
            return None
        raise
    if facts.server_version_num >= 150000:
        return conn.rows(f"READ_REPLICATION_SLOT {_quote_ident(slot)}")[0][1] or "?"
    return "?"


# --------------------------------------------------------------------------- the archive


def archive_problems(archive: WalArchive, facts: ServerFacts) -> list[str]:
    """Reasons this server's WAL must not go into this archive (empty: it may).

    The catalog's header is checked by ``WalArchive.init``; here: the history. A server on a
    lower timeline than the archive's newest, or behind the archive's newest sealed segment on
    the same timeline, is another history of the same cluster (restored from an older backup
    without a timeline switch, or a stale copy): its WAL would overwrite nothing but would
    make the chain ambiguous, so it gets a new archive.
    """
    entries = archive.entries()
    if not entries:
        return []
    newest_timeline = max(entry.timeline for entry in entries)
    if facts.timeline < newest_timeline:
        return [
            f"the server is on timeline {facts.timeline}, the archive already holds timeline {newest_timeline}: "
            "the server follows another history; move postgres_wal aside (a new archive) or point the receiver "
            "at the server of the newest timeline"
        ]
    same = [e for e in entries if e.kind == "segment" and e.timeline == facts.timeline and e.segno is not None]
    if same:
        archived_end = (max(e.segno for e in same if e.segno is not None) + 1) * facts.segment_size
        if facts.xlogpos < archived_end:
            return [
                f"the server's WAL ends at {format_lsn(facts.xlogpos)} on timeline {facts.timeline}, before the "
                f"archive's newest segment ends ({format_lsn(archived_end)}): the server is not the one this "
                "archive followed (a restored copy?); move postgres_wal aside for a new archive"
            ]
    return []


def old_timeline_partials(archive: WalArchive) -> list[Path]:
    """``.partial`` segments of a timeline a newer one has replaced (the newer timeline has
    segments here, sealed or partial): kept, never sealed."""
    partials = archive.partials()
    timelines = {e.timeline for e in archive.entries() if e.kind == "segment"}
    timelines |= {int(path.name[:8], 16) for path in partials}
    newest = max(timelines, default=0)
    return [path for path in partials if int(path.name[:8], 16) < newest]


# --------------------------------------------------------------------------- heartbeat


def write_json_private(path: Path, value: dict[str, Any]) -> None:
    """Atomic rewrite, 0600 (tmp + rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(value, fh, indent=1)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the service


def _parent_death_signal() -> Any:
    """A preexec function: the child gets SIGTERM when this process dies, even by SIGKILL, so
    no orphaned pg_receivewal keeps the slot busy. Resolved before fork (no loading in the child)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_signal() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)

    return set_signal


def check_environment() -> None:
    """The password comes only from a private passfile; the tool must exist."""
    if "PGPASSWORD" in os.environ:
        raise Refused("PGPASSWORD is set: the receiver takes its password only from PGPASSFILE (a 0600 file)")
    passfile = os.environ.get("PGPASSFILE")
    if passfile:
        path = Path(passfile)
        if not path.is_file():
            raise Refused(f"PGPASSFILE {passfile} is not a file")
        if path.stat().st_mode & 0o077:
            raise Refused(
                f"PGPASSFILE {passfile} is readable by others (mode {path.stat().st_mode & 0o777:o}): chmod 600 it"
            )
    if not shutil.which("pg_receivewal"):
        raise Refused("pg_receivewal is not on PATH: install the PostgreSQL client tools of the server's major")


class Receiver:
    def __init__(self, archive: WalArchive, slot: str, compression: str) -> None:
        self.archive, self.slot, self.compression = archive, slot, compression
        self.stopping = threading.Event()
        self.exit_code = 0
        self._child: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._status: dict[str, Any] = {
            "pid": os.getpid(),
            "started_at": format_time(utc_now()),
            "heartbeat_at": None,
            "state": "starting",
            "error": None,
            "system_identifier": None,
            "timeline": None,
            "last_sealed": None,
            "slot": slot,
            "server": f"{os.environ.get('PGHOST', 'localhost')}:{os.environ.get('PGPORT', '5432')}",
            "pg_receivewal_pid": None,
            "restarts": 0,
            "sealer_error": None,
        }
        self._noted_partials: set[str] = set()

    # ---------------------------------------------------------------- status

    def set_status(self, **changes: Any) -> None:
        with self._lock:
            self._status.update(changes)
        self.write_heartbeat()

    def write_heartbeat(self) -> None:
        with self._write_lock:  # several threads report; one tmp file at a time
            with self._lock:
                self._status["heartbeat_at"] = format_time(utc_now())
                snapshot = dict(self._status)
            try:
                write_json_private(self.archive.status_path, snapshot)
            except OSError as exc:  # a full disk must not stop streaming: the slot keeps the WAL
                log("error", f"cannot write {self.archive.status_path.name}: {exc}")

    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(HEARTBEAT_INTERVAL_S):
            self.write_heartbeat()

    def fail(self, message: str, *, fatal: bool) -> None:
        log("error", message, fatal="yes" if fatal else None)
        self.set_status(state="error", error=message, pg_receivewal_pid=None)
        if fatal:
            self.exit_code = EXIT_REFUSED
            self.stopping.set()
            self._terminate_child()

    def _terminate_child(self) -> None:
        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # pg_receivewal fsyncs its .partial and exits

    # ---------------------------------------------------------------- sealer

    def seal_pending(self) -> int:
        sealed = 0
        for path in self.archive.completed_unsealed():
            if path.name.endswith(".partial"):  # the growing segment (or an old timeline's last): never
                continue
            started = time.monotonic()
            try:
                entry = self.archive.seal(path, compression=self.compression)
            except FileNotFoundError:  # sealed by a previous pass between listing and sealing
                continue
            except WalConflict as exc:
                self.fail(
                    f"sealing {path.name}: {exc}: the archive holds different WAL under this name; "
                    "streaming stopped, nothing was overwritten",
                    fatal=True,
                )
                return sealed
            elapsed_ms = (time.monotonic() - started) * 1000
            log("sealed", entry.name, file=entry.file, size=entry.size, ms=f"{elapsed_ms:.0f}")
            self.set_status(last_sealed=entry.name)
            sealed += 1
        for path in old_timeline_partials(self.archive):
            if path.name not in self._noted_partials:
                self._noted_partials.add(path.name)
                log("kept", f"{path.name}: the last segment of a replaced timeline, kept raw and never sealed")
        return sealed

    def _sealer_loop(self) -> None:
        while not self.stopping.wait(SEAL_INTERVAL_S):
            try:
                self.seal_pending()
            except (OSError, WalError) as exc:  # e.g. a full disk: retried on the next pass
                message = f"sealer: {exc}"
                if message != self._status.get("sealer_error"):  # once per distinct problem
                    log("error", message)
                self.set_status(sealer_error=message)
            else:
                if self._status.get("sealer_error"):
                    self.set_status(sealer_error=None)

    # ---------------------------------------------------------------- streaming

    def prepare(self) -> ServerFacts:
        """Checks, archive header, slot; raises ServerProblem (retry) or Refused (stop)."""
        with ReplicationConnection() as conn:
            facts = probe_server(conn, self.slot)
            problems = configuration_problems(facts, self.slot)
            if problems:
                raise ServerProblem("; ".join(problems))
            try:
                self.archive.init(facts.system_identifier, facts.segment_size)
            except WalError as exc:
                raise Refused(
                    f"{exc} (server system identifier {facts.system_identifier}): a new cluster needs a new "
                    "archive; move postgres_wal aside"
                ) from exc
            problems = archive_problems(self.archive, facts)
            if problems:
                raise Refused("; ".join(problems))
            reserved_from = ensure_slot(conn, facts, self.slot)
            if reserved_from:
                log("slot-created", f"physical replication slot {self.slot}", reserved_from=reserved_from)
        self.set_status(system_identifier=facts.system_identifier, timeline=facts.timeline)
        return facts

    def _argv(self) -> list[str]:
        # no --compress: the sealer compresses, the growing .partial stays raw (see the module doc)
        return [
            shutil.which("pg_receivewal") or "pg_receivewal",
            "--directory",
            str(self.archive.segments),
            "--slot",
            self.slot,
            "--no-loop",  # a lost connection ends it: the next start re-checks the server
            "--status-interval",
            "1",
            "--synchronous",  # flush each write: the last received byte is on disk
            "--no-password",  # the passfile or nothing
            "--verbose",
        ]

    def _forward_output(self, child: subprocess.Popen[str]) -> None:
        assert child.stderr is not None
        for raw in child.stderr:
            line = raw.rstrip().removeprefix("pg_receivewal: ")
            if not line:
                continue
            log("pg_receivewal", line)
            if "starting log streaming at" in line:
                match = re.search(r"timeline (\d+)", line)
                self.set_status(
                    state="streaming", error=None, timeline=int(match.group(1)) if match else self._status["timeline"]
                )
            elif "switched to timeline" in line:
                match = re.search(r"switched to timeline (\d+)", line)
                if match:
                    self.set_status(timeline=int(match.group(1)))
            elif "error:" in line:
                with self._lock:
                    self._status["error"] = line.split("error:", 1)[1].strip()

    def stream_once(self) -> int:
        """Run pg_receivewal until it exits (or we stop); its exit status."""
        child = subprocess.Popen(
            self._argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_parent_death_signal(),
        )
        self._child = child
        self.set_status(pg_receivewal_pid=child.pid)
        log("started", "pg_receivewal", pid=child.pid, slot=self.slot, directory=self.archive.segments)
        reader = threading.Thread(target=self._forward_output, args=(child,), daemon=True)
        reader.start()
        code = child.wait()
        reader.join(timeout=5)
        self._child = None
        return code

    def stop(self, signum: int, _frame: object) -> None:
        log("stopping", f"signal {signal.Signals(signum).name}")
        self.stopping.set()
        self._terminate_child()

    def run(self) -> int:
        try:
            self.archive.ensure()
            # one receiver per archive: held for the lifetime, released by the kernel on any death
            lock_file = open(self.archive.root / "receiver.lock", "a")  # noqa: SIM115
        except (OSError, WalError) as exc:
            log("error", f"the WAL archive {self.archive.root} is not usable: {exc}", fatal="yes")
            return EXIT_REFUSED
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            status = self.archive.status() or {}
            log(
                "error",
                f"another receiver (pid {status.get('pid', '?')}) is streaming into {self.archive.root}",
                fatal="yes",
            )
            return EXIT_REFUSED
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        log(
            "started",
            "receiver",
            pid=os.getpid(),
            archive=self.archive.root,
            slot=self.slot,
            server=self._status["server"],
            user=os.environ.get("PGUSER"),
            compression=self.compression,
        )
        self.write_heartbeat()
        threads = [threading.Thread(target=loop, daemon=True) for loop in (self._heartbeat_loop, self._sealer_loop)]
        for thread in threads:
            thread.start()
        attempt = 0
        while not self.stopping.is_set():
            self.set_status(state="starting", pg_receivewal_pid=None)
            try:
                self.prepare()
            except Refused as exc:
                self.fail(str(exc), fatal=True)
                break
            except ServerProblem as exc:
                self.fail(str(exc), fatal=False)
            else:
                started = time.monotonic()
                code = self.stream_once()
                if self.stopping.is_set():
                    break
                if time.monotonic() - started >= STABLE_RUN_S:
                    attempt = 0
                with self._lock:
                    reason = self._status.get("error") or "connection lost"
                self.fail(f"pg_receivewal exited with status {code}: {reason}", fatal=False)
                self.set_status(restarts=self._status["restarts"] + 1)
            delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
            attempt += 1
            log("restart", f"in {delay} s")
            self.stopping.wait(delay)
        for thread in threads:
            thread.join(timeout=10)
        try:
            self.seal_pending()  # what pg_receivewal completed last is sealed before we go
        except (OSError, WalError) as exc:
            log("error", f"sealer: {exc}")
        if self.exit_code == 0:
            self.set_status(state="stopped", error=None, pg_receivewal_pid=None)
        log("stopped", "receiver", exit_code=self.exit_code)
        return self.exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dbops.pitr.receiver", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 0 when the heartbeat is fresh and streaming")
    args = parser.parse_args(argv)
    os.umask(0o077)  # every file here (and pg_receivewal's) is private

    from dbops.config import ConfigError, load_config

    try:
        config = load_config()
    except ConfigError as exc:
        log("error", f"configuration: {exc}", fatal="yes")
        return EXIT_REFUSED
    archive = WalArchive(Path(config.backup.root) / WAL_DIR)
    if args.check:
        problem = heartbeat_problem(archive.status(), max_age_s=HEARTBEAT_FRESH_S)
        print(problem or "streaming")
        return 1 if problem else 0
    receiver = Receiver(archive, config.pitr.slot, config.pitr.wal_compression)
    try:
        check_environment()
    except Refused as exc:
        archive.ensure()
        receiver.fail(str(exc), fatal=True)
        return EXIT_REFUSED
    return receiver.run()


if __name__ == "__main__":
    sys.exit(main())
