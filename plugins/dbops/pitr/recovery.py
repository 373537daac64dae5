"""Point-in-time recovery: a base backup plus the WAL archive, replayed into a scratch server.

The steps, each refusing as early as it can:

1. :class:`RecoveryTarget` (``target_time`` / ``target_lsn`` / ``target_name`` / latest) is
   parsed and checked without I/O: a time needs its zone and may not be in the future.
2. :func:`plan_recovery` picks the base backup (the newest verified one that is consistent
   at or before the target) and checks that the WAL from its start to the end of the
   archive is complete. A target outside the *recovery window* (from the oldest usable
   base backup's consistent point to the last WAL received) is refused, naming the window,
   before anything is written.
3. :func:`recover` re-verifies the base backup's files (sha256, manifest), extracts the tar
   into a new data directory, optionally checks it with ``pg_verifybackup`` (PG16 verifies
   plain format only, hence after extraction), stages the WAL it needs (each sealed segment
   verified against the catalog while decompressing, and the raw ``.partial`` under its
   segment name for targets at the end), writes the recovery settings and starts a
   scratch server on a free 127.0.0.1 port with ``recovery_target_action = promote``. It
   waits until the server is promoted; a recovery that ends before its target fails with
   the server's own FATAL line, and the scratch is removed.
4. The scratch server is then kept running (its address goes in the summary), or one
   database is copied into the live cluster as a new database (:func:`copy_database`,
   through the existing dump and restore path: never over an existing database without
   ``confirm_overwrite``).

:func:`drill_pitr` proves the whole chain: it restores to a time between two markers of
``dbops.pitr_markers`` and checks that exactly the markers up to that time exist, after
``pg_verifybackup`` passed on the extracted base; the result is recorded beside the base
backup (``drill.json``) like every other drill.

No Airflow import: the task layer passes endpoints and settings in.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from dbops.backup.adapter import DrillComparison, DrillEnvironmentError, Endpoint, LogFn, RestoreFailed, RestoreRefused
from dbops.backup.repository import Backup, BackupRepository, as_utc, format_time, parse_time
from dbops.backup.restore import _cleanup, confirm_overwrite, run_drill, verify_files
from dbops.pitr.basebackup import MANIFEST_FILE, WalNotSealed, open_tar, read_backup_manifest, wait_for_sealed
from dbops.pitr.wal import (
    BASE_STORE,
    ChainBroken,
    CorruptWal,
    WalArchive,
    WalError,
    chain_entries,
    check_chain,
    format_lsn,
    parse_lsn,
    parse_wal_name,
    segment_start_lsn,
)
from dbops.sqlfiles import load_sql
from dbops.stores.postgres.backup import pg_connect, tool_version
from dbops.tools import ToolError, find_tool, free_bytes, human_bytes, run_tool

TARGET_KINDS = ("time", "lsn", "name", "latest")
MAX_RESTORE_POINT_BYTES = 63  # MAXFNAMELEN - 1
MARKER_WRITER = "dbops_wal_check"
DRILL_MARKER_WRITER = "dbops_pitr_drill"
# a marker pair closer than this is not used by the drill: the commit of the first must
# fall before the midpoint, and a marker's "at" is taken a moment before its commit
MIN_MARKER_GAP = timedelta(seconds=0.5)
_RECOVERY_ENDED_EARLY = "recovery ended before configured recovery target was reached"
# server log words of a start that failed because of where it ran, not because of the backup
_ENVIRONMENT_WORDS = (
    "could not bind",
    "address already in use",
    "could not create shared memory",
    "could not create lock file",
    "no space left on device",
    "could not create any tcp/ip sockets",
    "permission denied",
    "could not load library",
)
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes, minus "/.s.PGSQL.NNNNN"


class RecoveryRefused(RestoreRefused):
    """Refused before any work (bad target, outside the window, no usable base backup)."""


class RecoveryFailed(RestoreFailed):
    """The recovery ran and did not reach what was asked; the scratch server is removed."""


class ScratchEnvironmentError(DrillEnvironmentError):
    """The scratch server could not be built or started because of its environment (port,
    disk, binaries, permissions): no verdict on the backup."""


# --------------------------------------------------------------------------- the target


@dataclass(frozen=True)
class RecoveryTarget:
    """Where recovery stops: ``time`` (aware, UTC), ``lsn``, ``name`` (a restore point
    made with ``pg_create_restore_point``) or ``latest`` (the end of the received WAL)."""

    kind: str
    value: str = ""
    time: datetime | None = None
    lsn: int | None = None

    @classmethod
    def parse(cls, kind: str, value: Any, *, now: datetime) -> RecoveryTarget:
        """Checked without I/O; RecoveryRefused naming the Param (``target_<kind>``)."""
        if kind not in TARGET_KINDS:
            raise RecoveryRefused(f"recovery target kind {kind!r} is not one of {', '.join(TARGET_KINDS)}")
        if kind == "latest":
            return cls("latest", "latest")
        param = f"target_{kind}"
        if not isinstance(value, str) or not value.strip():
            raise RecoveryRefused(f"{param} is empty")
        text = value.strip()
        if kind == "time":
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                raise RecoveryRefused(
                    f"{param} {text!r} is not a time: use ISO 8601 with its zone, e.g. 2026-12-01T10:15:00+00:00"
                ) from None
            if parsed.tzinfo is None or parsed.utcoffset() is None:
                raise RecoveryRefused(
                    f"{param} {text!r} has no time zone: add one (e.g. +00:00 or Z); a time without a zone is a guess"
                )
            moment = as_utc(parsed)
            if moment > as_utc(now, "now"):
                raise RecoveryRefused(
                    f"{param} {format_time(moment)} is in the future (now {format_time(as_utc(now))})"
                )
            return cls("time", format_time(moment), time=moment)
        if kind == "lsn":
            try:
                lsn = parse_lsn(text)
            except ValueError:
                raise RecoveryRefused(
                    f"{param} {text!r} is not an LSN: expected two hex halves, e.g. 0/3000028"
                ) from None
            return cls("lsn", format_lsn(lsn), lsn=lsn)
        if len(value.encode()) > MAX_RESTORE_POINT_BYTES:
            raise RecoveryRefused(
                f"{param} is longer than {MAX_RESTORE_POINT_BYTES} bytes: no restore point has such a name"
            )
        if any(ord(ch) < 32 or ch == "\x7f" for ch in value):
            raise RecoveryRefused(f"{param} {value!r} contains control characters")
        return cls("name", value)

    def describe(self) -> str:
        return "the end of the received WAL (latest)" if self.kind == "latest" else f"target_{self.kind} {self.value}"

    def settings(self) -> dict[str, str]:
        """The ``recovery_target_*`` settings (none for latest: replay to the end, then promote)."""
        if self.kind == "time":
            assert self.time is not None
            return {"recovery_target_time": self.time.isoformat()}
        if self.kind == "lsn":
            return {"recovery_target_lsn": self.value}
        if self.kind == "name":
            return {"recovery_target_name": self.value}
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}


def target_from_params(
    target_time: str = "", target_lsn: str = "", target_name: str = "", *, now: datetime
) -> RecoveryTarget:
    """The restore DAG's Params: exactly one of them; ``target_time`` may be ``latest``."""
    given = {
        k: v.strip()
        for k, v in (("time", target_time), ("lsn", target_lsn), ("name", target_name))
        if isinstance(v, str) and v.strip()
    }
    if len(given) != 1:
        names = ", ".join(f"target_{k}" for k in given) or "none"
        raise RecoveryRefused(f"give exactly one of target_time (or 'latest'), target_lsn, target_name; given: {names}")
    kind, value = next(iter(given.items()))
    if kind == "time" and value.lower() == "latest":
        return RecoveryTarget.parse("latest", "", now=now)
    return RecoveryTarget.parse(kind, value, now=now)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class RecoveryBase:
    """Where a base backup sits in the WAL (from its manifest's details)."""

    backup: Backup
    timeline: int
    start_lsn: int
    stop_lsn: int
    consistent_at: datetime

    @classmethod
    def of(cls, backup: Backup) -> RecoveryBase:
        details = backup.manifest.get("details") or {}
        try:
            return cls(
                backup,
                int(details["timeline"]),
                parse_lsn(details["start_lsn"]),
                parse_lsn(details["stop_lsn"]),
                parse_time(details["consistent_at"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise RecoveryRefused(
                f"base backup {backup.backup_id} has no usable WAL position in its manifest: {exc}"
            ) from None


@dataclass(frozen=True)
class RecoveryWindow:
    """What can be recovered: from the oldest usable base backup's consistent point to the
    last WAL received (the receiver's heartbeat while streaming, the growing segment's last
    write, or the last sealed segment)."""

    earliest: datetime | None
    latest: datetime | None
    earliest_backup: str | None = None

    def text(self) -> str:
        if self.earliest is None or self.latest is None:
            return "empty (no base backup with a complete WAL chain)"
        return f"{format_time(self.earliest)} (base backup {self.earliest_backup}) to {format_time(self.latest)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "earliest": self.earliest and format_time(self.earliest),
            "latest": self.latest and format_time(self.latest),
            "earliest_backup": self.earliest_backup,
        }


@dataclass
class RecoveryPlan:
    """What a recovery will use; every refusal was raised while making it."""

    repo: BackupRepository
    archive: WalArchive
    target: RecoveryTarget
    base: RecoveryBase
    segment_size: int
    window: RecoveryWindow
    wal_segments: int
    notes: list[str] = field(default_factory=list)

    @property
    def backup(self) -> Backup:
        return self.base.backup

    def to_dict(self) -> dict[str, Any]:
        details = self.backup.manifest.get("details") or {}
        return {
            "target": self.target.to_dict(),
            "base_backup": self.backup.backup_id,
            "timeline": self.base.timeline,
            "start_lsn": format_lsn(self.base.start_lsn),
            "consistent_at": format_time(self.base.consistent_at),
            "server_version": details.get("server_version"),
            "wal_segments": self.wal_segments,
            "window": self.window.to_dict(),
            "notes": list(self.notes),
        }


def _chain_problems(entries: list[Any], info: RecoveryBase, segment_size: int, end_segno: int | None) -> list[str]:
    start = info.start_lsn // segment_size
    end = end_segno if end_segno is not None and end_segno >= start else None
    return check_chain(entries, info.timeline, info.start_lsn, segment_size=segment_size, end_segno=end)


def plan_recovery(
    repo: BackupRepository,
    archive: WalArchive,
    target: RecoveryTarget,
    *,
    now: datetime,
    backup_id: str | None = None,
) -> RecoveryPlan:
    """The base backup and WAL a recovery to ``target`` uses; RecoveryRefused (naming the
    recovery window) before any work when it cannot be done. ``backup_id`` forces a base
    backup (else: the newest verified one consistent at or before the target; for a
    restore point name, which cannot be placed in advance, the oldest usable one)."""
    now = as_utc(now, "now")
    header = archive.header() if archive.catalog_path.exists() else None
    if header is None:
        raise RecoveryRefused(f"the WAL archive {archive.root} has no catalog: there is no WAL to recover with")
    segment_size = int(header["wal_segment_size"])
    entries = archive.entries()
    backups = repo.list(BASE_STORE)
    verified = [RecoveryBase.of(b) for b in backups if b.verified]
    if not verified:
        raise RecoveryRefused(f"no verified base backup in {repo.series_path(BASE_STORE)} ({len(backups)} unverified)")
    end_segno = archive.received_end_segno(entries, segment_size)
    problems = {info.backup.backup_id: _chain_problems(entries, info, segment_size, end_segno) for info in verified}
    usable = [info for info in verified if not problems[info.backup.backup_id]]
    if not usable:
        newest = verified[-1]
        raise RecoveryRefused(
            f"no base backup has a complete WAL chain to the end of the archive (recovery window empty); "
            f"newest {newest.backup.backup_id}: {'; '.join(problems[newest.backup.backup_id][:5])}"
        )
    first = min(usable, key=lambda i: i.consistent_at)
    window = RecoveryWindow(first.consistent_at, archive.latest_received(entries), first.backup.backup_id)
    if window.latest is not None and window.latest < first.consistent_at:
        window = RecoveryWindow(first.consistent_at, first.consistent_at, first.backup.backup_id)
    notes: list[str] = []
    where = f"recovery window {window.text()}"

    if backup_id is not None:
        chosen = next((i for i in verified if i.backup.backup_id == backup_id), None)
        if chosen is None:
            raise RecoveryRefused(
                f"no verified base backup {backup_id} (verified: {', '.join(i.backup.backup_id for i in verified)})"
            )
        if problems[backup_id]:
            raise RecoveryRefused(
                f"the WAL chain after base backup {backup_id} is broken: {'; '.join(problems[backup_id][:5])}"
            )
        candidates = [chosen]
    else:
        candidates = usable

    if target.kind == "time":
        assert target.time is not None
        if target.time > now:
            raise RecoveryRefused(f"target_time {target.value} is in the future (now {format_time(now)}); {where}")
        if target.time < first.consistent_at:
            raise RecoveryRefused(f"target_time {target.value} is before the first base backup is consistent; {where}")
        if window.latest is None or target.time > window.latest:
            raise RecoveryRefused(
                f"target_time {target.value} is after the last WAL "
                f"received (the receiver may be behind or down); {where}"
            )
        fitting = [i for i in candidates if i.consistent_at <= target.time]
        if not fitting:
            raise RecoveryRefused(
                f"base backup {backup_id} is consistent only at "
                f"{format_time(candidates[0].consistent_at)}, after target_time {target.value}"
            )
        chosen = max(fitting, key=lambda i: i.consistent_at)
    elif target.kind == "lsn":
        assert target.lsn is not None
        end = archive.received_end_lsn(entries, segment_size)
        if target.lsn > end:
            raise RecoveryRefused(
                f"target_lsn {target.value} is beyond the WAL received (up to at most {format_lsn(end)}); {where}"
            )
        fitting = [i for i in candidates if i.stop_lsn <= target.lsn]
        if not fitting:
            oldest = min(candidates, key=lambda i: i.stop_lsn)
            raise RecoveryRefused(
                f"target_lsn {target.value} is before the first base backup is consistent "
                f"(stop LSN {format_lsn(oldest.stop_lsn)} of {oldest.backup.backup_id}); {where}"
            )
        chosen = max(fitting, key=lambda i: i.stop_lsn)
    elif target.kind == "name":
        chosen = candidates[0] if backup_id else min(candidates, key=lambda i: i.consistent_at)
        notes.append(
            f"a restore point name cannot be placed in the WAL in advance: recovery replays from base backup "
            f"{chosen.backup.backup_id} and fails if no restore point {target.value!r} follows it"
        )
    else:
        chosen = max(candidates, key=lambda i: i.consistent_at)
    start_segno = chosen.start_lsn // segment_size
    needed = chain_entries(
        entries,
        chosen.timeline,
        chosen.start_lsn,
        segment_size=segment_size,
        end_segno=end_segno if end_segno is not None and end_segno >= start_segno else None,
    )
    return RecoveryPlan(
        repo, archive, target, chosen, segment_size, window, sum(1 for e in needed if e.kind == "segment"), notes
    )


# --------------------------------------------------------------------------- the scratch server


def server_bin_dir(server_bin: str | Path | None) -> Path:
    """The folder with ``postgres`` and ``pg_ctl``: ``pitr.server_bin``, else beside pg_basebackup."""
    folder = Path(server_bin) if server_bin else Path(os.path.realpath(find_tool("pg_basebackup"))).parent
    missing = [t for t in ("postgres", "pg_ctl") if not os.access(folder / t, os.X_OK)]
    if missing:
        raise ScratchEnvironmentError(
            f"{', '.join(missing)} not found in {folder}: set pitr.server_bin to the folder "
            "holding the server binaries of the cluster's major version"
        )
    return folder


def _major(text: str) -> int:
    match = re.search(r"(\d+)", text.split(")")[-1]) or re.search(r"(\d+)", text)
    return int(match.group(1)) if match else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _as_user(argv: list[str], os_user: str | None) -> list[str]:
    return ["runuser", "-u", os_user, "--", *argv] if os_user else argv


def _chown_tree(path: Path, os_user: str) -> None:
    uid, gid = shutil._get_uid(os_user), shutil._get_gid(os_user)  # type: ignore[attr-defined]
    if uid is None or gid is None:
        raise ScratchEnvironmentError(f"OS user {os_user!r} (pitr.scratch_os_user) does not exist on this worker")
    os.lchown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


@dataclass
class ScratchServer:
    """A recovered server on 127.0.0.1: keep it (its address is in :meth:`summary`) or
    :meth:`stop` it (which removes its folder)."""

    host: str
    port: int
    root: Path
    data_dir: Path
    socket_dir: Path
    log_path: Path
    superuser: str
    bin_dir: Path
    os_user: str | None
    backup_id: str
    target: RecoveryTarget
    recovery_log: list[str] = field(default_factory=list)
    pg_verifybackup: str | None = None
    stopped: bool = False

    def endpoint(self, database: str | None = None) -> Endpoint:
        """Its superuser, over its private socket folder (trusted: only its OS user and root reach it)."""
        return Endpoint(
            host=str(self.socket_dir), port=self.port, login=self.superuser, database=database or "postgres"
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def summary(self) -> str:
        return (
            f"scratch server recovered from base backup {self.backup_id} to {self.target.describe()}: "
            f"{self.address} (socket {self.socket_dir}, data {self.data_dir}, log {self.log_path}); "
            "the roles and passwords are those of the cluster at the target"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "data_dir": str(self.data_dir),
            "socket_dir": str(self.socket_dir),
            "log": str(self.log_path),
            "backup_id": self.backup_id,
            "target": self.target.to_dict(),
            "recovery_log": self.recovery_log,
            "summary": self.summary(),
        }

    def stop(self, *, remove: bool = True, log: LogFn | None = None) -> None:
        """Stop the server (fast, then immediate) and remove its folder; harmless twice."""
        say = log or (lambda _line: None)
        if not self.stopped and (self.data_dir / "postmaster.pid").exists():
            pg_ctl = str(self.bin_dir / "pg_ctl")
            for mode in ("fast", "immediate"):
                try:
                    run_tool(
                        _as_user(
                            [pg_ctl, "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop"], self.os_user
                        ),
                        log=say,
                        cwd=Path("/"),
                    )
                    break
                except ToolError as exc:
                    say(f"pg_ctl stop -m {mode} of the scratch server failed: {exc}")
        self.stopped = True
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)
            say(f"removed the scratch server's folder {self.root}")


def _log_tail(path: Path, limit: int = 64 * 1024) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - limit))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _fatal_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if re.search(r"\b(FATAL|PANIC)\b", line)]


def _recovery_lines(text: str) -> list[str]:
    words = (
        "recovery stopping",
        "redo done",
        "last completed transaction",
        "selected new timeline",
        "archive recovery complete",
        "consistent recovery state",
        "starting point-in-time recovery",
    )
    return [line.strip() for line in text.splitlines() if any(w in line for w in words)]


def _postmaster_alive(data_dir: Path) -> bool:
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return os.path.exists(f"/proc/{pid}")


def verify_extracted(data_dir: Path, manifest: Path, bin_dir: Path, log: LogFn) -> str:
    """``pg_verifybackup -n`` of an extracted base (plain format) against its backup_manifest:
    every file's size and checksum. The WAL is not parsed (it is in the archive, not the
    backup). Returns its output; RecoveryFailed naming what it found."""
    tool = bin_dir / "pg_verifybackup"
    if not os.access(tool, os.X_OK):
        tool = Path(find_tool("pg_verifybackup"))
    try:
        out = run_tool([str(tool), "--no-parse-wal", f"--manifest-path={manifest}", str(data_dir)], log=log)
    except ToolError as exc:
        raise RecoveryFailed(f"pg_verifybackup found the base backup damaged: {exc}") from None
    text = out.strip() or "backup successfully verified"
    log(f"pg_verifybackup: {text}")
    return text


def _prepare_dirs(scratch_dir: Path, backup_id: str, os_user: str | None) -> Path:
    scratch_dir = Path(scratch_dir)
    if not scratch_dir.is_absolute():
        raise RecoveryRefused(f"pitr.scratch_dir {scratch_dir} must be an absolute path")
    try:
        scratch_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
    except OSError as exc:
        raise ScratchEnvironmentError(f"cannot create the scratch folder {scratch_dir}: {exc}") from exc
    root = scratch_dir / f"pitr-{backup_id.lower()}-{secrets.token_hex(3)}"
    root.mkdir(mode=0o700)
    return root


def _stage_wal(plan: RecoveryPlan, wal_dir: Path, log: LogFn) -> int:
    """Every WAL file from the base backup's start to the end of the archive, verified while
    decompressed, plus the growing segment (raw) where the target may lie in it."""
    archive = plan.archive
    entries = archive.entries()
    end_segno = archive.received_end_segno(entries, plan.segment_size)
    if end_segno is not None and end_segno < plan.base.start_lsn // plan.segment_size:
        end_segno = None
    try:
        needed = chain_entries(
            entries, plan.base.timeline, plan.base.start_lsn, segment_size=plan.segment_size, end_segno=end_segno
        )
    except ChainBroken as exc:
        raise RecoveryFailed(f"the WAL chain after base backup {plan.backup.backup_id} is broken: {exc}") from None
    for entry in needed:
        try:
            archive.extract(entry, wal_dir / entry.name)
        except CorruptWal as exc:
            raise RecoveryFailed(f"WAL {entry.name} in the archive is damaged: {exc}") from None
    segments = [e for e in needed if e.kind == "segment"]
    staged = len(segments)
    last = segments[-1] if segments else None
    partial = archive.partial()
    wanted = plan.target.kind != "lsn" or (
        plan.target.lsn is not None
        and plan.target.lsn >= segment_start_lsn((last.segno or 0) + 1 if last else 0, plan.segment_size)
    )
    if partial is not None and wanted:
        name = partial.name[: -len(".partial")]
        parsed = parse_wal_name(name, plan.segment_size)
        newer = parsed is not None and (last is None or (parsed[0], parsed[1]) > (last.timeline, last.segno or 0))
        if newer:
            try:
                archive.extract_partial(partial, wal_dir / name)
                staged += 1
                log(f"staged the segment being received, {name} (raw copy of {partial.name})")
            except (OSError, WalError) as exc:  # completed and sealed meanwhile: take the sealed copy
                sealed = archive.find(name)
                if sealed is None:
                    raise RecoveryFailed(
                        f"the segment being received, {partial.name}, could not be copied: {exc}"
                    ) from None
                archive.extract(sealed, wal_dir / name)
                staged += 1
    log(f"staged {staged} WAL segment(s) from {segments[0].name if segments else '-'} on for recovery")
    return staged


def _write_settings(data_dir: Path, *, port: int, socket_dir: Path, wal_dir: Path, target: RecoveryTarget) -> None:
    restore = f'cp "{wal_dir}/%f" "%p"'
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(socket_dir),
        "archive_mode": "off",
        "primary_conninfo": "",
        "primary_slot_name": "",
        "synchronous_standby_names": "",
        "logging_collector": "off",
        "hot_standby": "on",
        "restore_command": restore,
        "recovery_target_action": "promote",
        "recovery_target_timeline": "latest",
        **target.settings(),
    }
    lines = ["", "# dbops point-in-time recovery: a scratch server (settings below override the source's)"]
    lines += [f"{k} = {_conf_quote(v)}" for k, v in settings.items()]
    with open(data_dir / "postgresql.auto.conf", "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    (data_dir / "pg_hba.conf").write_text(
        "# dbops scratch server: its superuser through the private socket folder (0700, its OS user\n"
        "# and root only); TCP from this host with the passwords of the cluster at the target.\n"
        "local all all trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
    )
    (data_dir / "recovery.signal").touch()


def _wait_promoted(server: ScratchServer, *, timeout_s: float, log: LogFn) -> None:
    deadline = time.monotonic() + timeout_s
    grace = time.monotonic() + 10  # pg_ctl -W returns before postmaster.pid exists
    last_progress = 0.0
    while True:
        text = _log_tail(server.log_path)
        fatal = _fatal_lines(text)
        alive = _postmaster_alive(server.data_dir)
        if not alive and (fatal or time.monotonic() > grace):
            detail = fatal[-1] if fatal else (text.strip().splitlines() or ["no server log"])[-1]
            if any(_RECOVERY_ENDED_EARLY in line for line in fatal):
                hint = (
                    " (no transaction after target_time was received: the state at that time is the latest one; "
                    "restore with latest)"
                    if server.target.kind == "time"
                    else ""
                )
                raise RecoveryFailed(f"recovery to {server.target.describe()} failed: {detail}{hint}")
            if any(w in line.lower() for line in fatal for w in _ENVIRONMENT_WORDS):
                raise ScratchEnvironmentError(f"the scratch server could not start: {detail}")
            raise RecoveryFailed(f"the scratch server stopped during recovery to {server.target.describe()}: {detail}")
        if alive:
            try:
                with pg_connect(server.endpoint(), autocommit=True) as conn:
                    in_recovery = conn.execute(load_sql("pitr/in_recovery.sql")).fetchone()[0]  # type: ignore[index]
                if not in_recovery:
                    server.recovery_log = _recovery_lines(_log_tail(server.log_path, 1024 * 1024))
                    for line in server.recovery_log:
                        log(f"scratch server: {line}")
                    return
            except psycopg.OperationalError:
                pass  # starting up, or not yet consistent
        if time.monotonic() > deadline:
            raise RecoveryFailed(
                f"the scratch server did not finish recovery within {timeout_s:.0f}s "
                f"(last log lines: {' | '.join(text.strip().splitlines()[-3:])})"
            )
        if time.monotonic() - last_progress > 30:
            last_progress = time.monotonic()
            log("waiting for the scratch server to replay the WAL and promote")
        time.sleep(0.3)


def recover(
    plan: RecoveryPlan,
    *,
    scratch_dir: Path,
    server_bin: str | Path | None,
    os_user: str | None,
    port: int | None = None,
    verify_files_first: bool = True,
    verify_backup: bool = False,
    timeout_s: float = 1800.0,
    log: LogFn,
) -> ScratchServer:
    """Build and start a scratch server recovered as ``plan`` says; returns it promoted.

    The worker runs the server as ``os_user`` when it is root (PostgreSQL refuses root): the
    folders are chowned to it and every parent of ``scratch_dir`` must let it through (o+x).
    ``verify_backup``: ``pg_verifybackup`` on the extracted base before the server starts.
    Any failure stops and removes the scratch (RecoveryFailed: a verdict; ScratchEnvironmentError:
    the environment's fault)."""
    backup = plan.backup
    details = backup.manifest.get("details") or {}
    bin_dir = server_bin_dir(server_bin)
    server_major = _major(tool_version(str(bin_dir / "postgres")))
    backup_major = int(details.get("server_version_num") or 0) // 10000 or _major(
        str(details.get("server_version", ""))
    )
    if backup_major and server_major != backup_major:
        raise ScratchEnvironmentError(
            f"the server binaries in {bin_dir} are PostgreSQL {server_major}, the base backup "
            f"is of {backup_major}: set pitr.server_bin to a {backup_major} installation"
        )
    if os.geteuid() == 0:
        if not os_user:
            raise ScratchEnvironmentError(
                "PostgreSQL refuses to run as root: set pitr.scratch_os_user to the OS user the scratch server runs as"
            )
    else:
        os_user = None  # the worker's own user runs it
    if verify_files_first:
        verify_files(plan.repo, backup, log)
    manifest = read_backup_manifest(backup.path / MANIFEST_FILE)
    data_bytes = sum(int(f["Size"]) for f in manifest["Files"])
    needed_bytes = int(data_bytes * 1.1) + (plan.wal_segments + 2) * plan.segment_size
    free = free_bytes(Path(scratch_dir))
    if free is not None and free < needed_bytes:
        raise ScratchEnvironmentError(
            f"not enough space for the scratch server in {scratch_dir}: needs about "
            f"{human_bytes(needed_bytes)}, {human_bytes(free)} free"
        )
    root = _prepare_dirs(Path(scratch_dir), backup.backup_id, os_user)
    data_dir, wal_dir, socket_dir = root / "data", root / "wal", root / "s"
    if len(str(socket_dir)) > _SOCKET_PATH_MAX - 16:
        shutil.rmtree(root, ignore_errors=True)
        raise ScratchEnvironmentError(
            f"the scratch folder {scratch_dir} is too deep for a Unix socket path: choose a shorter pitr.scratch_dir"
        )
    server = ScratchServer(
        host="127.0.0.1",
        port=port or _free_port(),
        root=root,
        data_dir=data_dir,
        socket_dir=socket_dir,
        log_path=root / "server.log",
        superuser=str(details.get("bootstrap_superuser") or "postgres"),
        bin_dir=bin_dir,
        os_user=os_user,
        backup_id=backup.backup_id,
        target=plan.target,
    )
    started = time.monotonic()
    try:
        for folder in (data_dir, wal_dir, socket_dir):
            folder.mkdir(mode=0o700)
        tar = backup.path / str(details.get("tar") or "base.tar.gz")
        with open_tar(tar) as stream:
            stream.extractall(data_dir, filter="data")
        os.chmod(data_dir, 0o700)
        log(
            f"extracted {tar.name} of base backup {backup.backup_id} "
            f"into {data_dir} ({time.monotonic() - started:.1f}s)"
        )
        if verify_backup:
            server.pg_verifybackup = verify_extracted(data_dir, backup.path / MANIFEST_FILE, bin_dir, log)
        _stage_wal(plan, wal_dir, log)
        _write_settings(data_dir, port=server.port, socket_dir=socket_dir, wal_dir=wal_dir, target=plan.target)
        if os_user:
            _chown_tree(root, os_user)
            probe = subprocess.run(_as_user(["test", "-w", str(data_dir)], os_user), capture_output=True, cwd="/")
            if probe.returncode != 0:
                raise ScratchEnvironmentError(
                    f"OS user {os_user} cannot reach {data_dir}: every parent folder of "
                    f"pitr.scratch_dir ({scratch_dir}) needs o+x"
                )
        pg_ctl = str(bin_dir / "pg_ctl")
        log(f"starting the scratch server on {server.address} to recover to {plan.target.describe()}")
        run_tool(
            _as_user([pg_ctl, "-D", str(data_dir), "-l", str(server.log_path), "-W", "start"], os_user),
            log=log,
            cwd=Path("/"),
        )
        _wait_promoted(server, timeout_s=timeout_s, log=log)
    except BaseException as exc:
        tail = _log_tail(server.log_path, 4096).strip()
        if tail:
            log("scratch server log (end):\n" + tail)
        server.stop(remove=True, log=log)
        if isinstance(exc, (tarfile.TarError, EOFError)):
            raise RecoveryFailed(f"the base backup {backup.backup_id} could not be extracted: {exc}") from exc
        if isinstance(exc, OSError) and (exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc)):
            raise ScratchEnvironmentError(f"no space left for the scratch server in {scratch_dir}: {exc}") from exc
        raise
    log(f"scratch server promoted in {time.monotonic() - started:.1f}s: {server.summary()}")
    return server


def restore_pitr(
    repo: BackupRepository,
    archive: WalArchive,
    target: RecoveryTarget,
    *,
    now: datetime,
    scratch_dir: Path,
    server_bin: str | Path | None,
    os_user: str | None,
    backup_id: str | None = None,
    timeout_s: float = 1800.0,
    log: LogFn,
) -> tuple[RecoveryPlan, ScratchServer]:
    """Plan (every refusal first, nothing written) then recover: the restore DAG's one call."""
    plan = plan_recovery(repo, archive, target, now=now, backup_id=backup_id)
    log(
        f"recovery plan: base backup {plan.backup.backup_id} (consistent at {format_time(plan.base.consistent_at)}), "
        f"{plan.wal_segments} WAL segment(s), {target.describe()}; recovery window {plan.window.text()}"
    )
    for note in plan.notes:
        log(f"note: {note}")
    return plan, recover(
        plan, scratch_dir=scratch_dir, server_bin=server_bin, os_user=os_user, timeout_s=timeout_s, log=log
    )


# --------------------------------------------------------------------------- one database into the live cluster


def check_copy_target(live: Endpoint, target_db: str, confirm: str) -> dict[str, Any]:
    """Whether ``target_db`` may receive a copy (before any recovery work): never
    postgres/template*/drill names; an existing database only when ``confirm`` names it."""
    from dbops.stores.postgres.recovery import MAINTENANCE_DB, check_pg_target

    check_pg_target(target_db)
    with pg_connect(live, MAINTENANCE_DB, autocommit=True) as admin:
        exists = bool(admin.execute(load_sql("backup/pg_database_exists.sql"), [target_db]).fetchone()[0])  # type: ignore[index]
    reason = f"database {target_db!r} exists in the live cluster" if exists else None
    overwrite = confirm_overwrite(target=target_db, reason=reason, confirm=confirm)
    return {"target": target_db, "exists": exists, "overwrite": exists and overwrite}


def copy_database(
    scratch: ScratchServer,
    source_db: str,
    live: Endpoint,
    target_db: str,
    confirm: str,
    *,
    run_id: str,
    dag_id: str,
    jobs: int = 2,
    compression: str = "auto",
    log: LogFn,
) -> dict[str, Any]:
    """One database of the recovered scratch server into the live cluster as a new database,
    through the existing logical path: a normal dbops Postgres dump (described in its own
    snapshot) into a scratch repository beside the scratch server, then the Postgres restore
    (plan: target checked, an existing one needs ``confirm``; build the copy, compare with
    the dump's description, set the old one aside, mark). RestoreRefused before any work."""
    from dbops.backup.runner import take_backup
    from dbops.stores.postgres.backup import PostgresDatabaseBackup, series_name
    from dbops.stores.postgres.recovery import check_pg_database, plan_postgres, restore_postgres

    check_pg_database(source_db)
    check_copy_target(live, target_db, confirm)
    with pg_connect(scratch.endpoint(), autocommit=True) as conn:
        found = conn.execute(load_sql("backup/pg_database_exists.sql"), [source_db]).fetchone()[0]  # type: ignore[index]
    if not found:
        raise RecoveryRefused(
            f"database {source_db!r} does not exist in the recovered cluster (at {scratch.target.describe()})"
        )
    dump_root = scratch.root / "dump"
    repo = BackupRepository(dump_root)
    subject = series_name(source_db)
    adapter = PostgresDatabaseBackup(scratch.endpoint(source_db), source_db, jobs=jobs, compression=compression)
    take_backup(
        repo,
        adapter,
        store="postgres",
        subject=subject,
        run_id=run_id,
        dag_id=dag_id,
        logical_date=None,
        force=True,
        stale_staging=timedelta(hours=1),
        log=log,
    )
    backup = repo.latest("postgres", subject)
    assert backup is not None
    plan = plan_postgres(live, backup, source=source_db, target=target_db, confirm=confirm)
    for action in plan.actions:
        log(f"plan: {action}")
    result = restore_postgres(live, backup, plan, jobs=jobs, log=log)
    shutil.rmtree(dump_root, ignore_errors=True)
    if result["differences"]:
        raise RecoveryFailed(
            f"the copy of {source_db} in {target_db} differs from the recovered database: "
            + "; ".join(result["differences"][:10])
        )
    return {**result, "recovered_to": scratch.target.to_dict(), "base_backup": scratch.backup_id}


# --------------------------------------------------------------------------- markers


@dataclass(frozen=True)
class Marker:
    id: int
    at: datetime
    written_by: str | None = None


def ensure_markers(endpoint: Endpoint, database: str | None = None) -> None:
    """``dbops.pitr_markers`` in ``database`` (created if absent)."""
    with pg_connect(endpoint, database, autocommit=True) as conn:
        if not conn.execute(load_sql("pitr/markers_exists.sql")).fetchone()[0]:  # type: ignore[index]
            conn.execute(load_sql("pitr/markers_create.sql"))


def write_marker(endpoint: Endpoint, database: str | None = None, *, written_by: str = MARKER_WRITER) -> dict[str, Any]:
    """One committed marker row: {"id", "at" (its time, UTC), "lsn" (the server's WAL
    position just after the commit), "database"}."""
    ensure_markers(endpoint, database)
    with pg_connect(endpoint, database, autocommit=True) as conn:
        marker_id, at = conn.execute(load_sql("pitr/marker_insert.sql"), {"written_by": written_by}).fetchone()  # type: ignore[misc]
        lsn = conn.execute(load_sql("pitr/current_wal_lsn.sql")).fetchone()[0]  # type: ignore[index]
    return {
        "id": int(marker_id),
        "at": format_time(as_utc(at)),
        "lsn": str(lsn),
        "database": database or endpoint.database or "postgres",
    }


def read_markers(endpoint: Endpoint, database: str | None = None) -> list[Marker] | None:
    """Every marker, oldest first; None when the table does not exist there."""
    with pg_connect(endpoint, database, autocommit=True) as conn:
        if not conn.execute(load_sql("pitr/markers_exists.sql")).fetchone()[0]:  # type: ignore[index]
            return None
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(load_sql("pitr/markers_list.sql")).fetchall()
    return [Marker(int(r["id"]), as_utc(r["at"]), r["written_by"]) for r in rows]


def compare_markers(expected: list[Marker], actual: list[Marker], target: datetime) -> list[str]:
    """Differences between the live markers up to ``target`` and a recovery's markers."""
    want = {m.id: m for m in expected if m.at <= target}
    got = {m.id: m for m in actual}
    problems = []
    missing = sorted(set(want) - set(got))
    if missing:
        problems.append(f"markers committed before the target are missing from the recovery: ids {missing[:20]}")
    late = sorted(i for i in set(got) - set(want) if i in {m.id for m in expected})
    if late:
        problems.append(f"markers written after the target are in the recovery: ids {late[:20]}")
    unknown = sorted(set(got) - {m.id for m in expected})
    if unknown:
        problems.append(f"markers not in the live table are in the recovery: ids {unknown[:20]}")
    changed = sorted(i for i in set(want) & set(got) if want[i].at != got[i].at)
    if changed:
        problems.append(f"markers with another time in the recovery: ids {changed[:20]}")
    return problems


def _choose_markers(
    markers: list[Marker], after: datetime, before: datetime | None = None
) -> tuple[Marker, Marker] | None:
    """The newest two consecutive markers, both after ``after``, far enough apart, the
    second no later than ``before`` (when given)."""
    ordered = sorted(markers, key=lambda m: (m.at, m.id))
    for first, second in reversed(list(zip(ordered, ordered[1:], strict=False))):
        if first.at > after and second.at - first.at >= MIN_MARKER_GAP and (before is None or second.at <= before):
            return first, second
    return None


# --------------------------------------------------------------------------- the drill


def drill_pitr(
    repo: BackupRepository,
    archive: WalArchive,
    live: Endpoint,
    marker_database: str | None,
    *,
    scratch_dir: Path,
    server_bin: str | Path | None,
    os_user: str | None,
    wait_for_wal_s: float,
    run_id: str,
    dag_id: str,
    timeout_s: float = 1800.0,
    wal_ends_at: datetime | None = None,
    log: LogFn,
) -> dict[str, Any]:
    """Restore the newest verified base backup to a time between two markers and prove that
    exactly the live markers up to that time are there; ``pg_verifybackup`` on the extracted
    base first. Recorded as the base backup's ``drill`` sidecar ({ok, differences, target,
    seconds, ...}); a broken WAL chain is a failed drill naming the missing segment.
    ScratchEnvironmentError (nothing recorded) when the environment stopped it.

    ``wal_ends_at``: ``archive`` is a fixed copy (fetched from offsite) whose last transaction
    ended then: the markers are chosen before it, none is written and no receiver is waited
    for (nothing will arrive in that copy); RecoveryRefused when it holds no two markers."""
    from dbops.stores.postgres.recovery import MAINTENANCE_DB

    verified = [b for b in repo.list(BASE_STORE) if b.verified]
    if not verified:
        raise RecoveryRefused(
            f"no verified base backup in {repo.series_path(BASE_STORE)}: the PITR drill has nothing to restore"
        )
    backup = verified[-1]
    base = RecoveryBase.of(backup)
    database = marker_database or live.database or MAINTENANCE_DB
    try:
        ensure_markers(live, database)
        markers = read_markers(live, database) or []
        pair = _choose_markers(markers, base.consistent_at, wal_ends_at)
        if pair is None and wal_ends_at is not None:
            raise RecoveryRefused(
                f"fewer than two markers of {database} were committed between base backup {backup.backup_id} "
                f"(consistent at {format_time(base.consistent_at)}) and the end of the WAL in {archive.root} "
                f"(last transaction at {format_time(wal_ends_at)}): nothing to recover between (dbops_wal_check writes "
                "a marker every run and ships the sealed WAL)"
            )
        if pair is None:
            log(
                f"fewer than two markers after base backup {backup.backup_id} "
                "was consistent: writing two, a second apart"
            )
            write_marker(live, database, written_by=DRILL_MARKER_WRITER)
            time.sleep(1.0)
            write_marker(live, database, written_by=DRILL_MARKER_WRITER)
            markers = read_markers(live, database) or []
            pair = _choose_markers(markers, base.consistent_at)
            assert pair is not None
        with pg_connect(live, database, autocommit=True) as conn:
            written_to = parse_lsn(conn.execute(load_sql("pitr/current_wal_lsn.sql")).fetchone()[0])  # type: ignore[index]
    except psycopg.OperationalError as exc:
        raise ScratchEnvironmentError(f"the live server cannot be reached for the drill's markers: {exc}") from exc
    first, second = pair
    target_time = first.at + (second.at - first.at) / 2
    target = RecoveryTarget("time", format_time(target_time), time=target_time)
    log(
        f"PITR drill of base backup {backup.backup_id}: target {target.value}, between marker {first.id} "
        f"({format_time(first.at)}) and marker {second.id} ({format_time(second.at)})"
    )
    if wal_ends_at is None:  # the marker after the target must be in the archive: it is what stops the recovery
        _wait_received(archive, live, base, written_to, timeout_s=wait_for_wal_s, log=log)

    def drill(_backup: Backup, found: DrillComparison) -> None:
        try:
            plan = plan_recovery(
                repo, archive, target, now=datetime.now(target_time.tzinfo), backup_id=backup.backup_id
            )
        except RecoveryRefused as exc:
            found.differences.append(f"WAL chain: {exc}")
            return
        scratch: ScratchServer | None = None
        try:
            scratch = recover(
                plan,
                scratch_dir=scratch_dir,
                server_bin=server_bin,
                os_user=os_user,
                verify_files_first=False,
                verify_backup=True,
                timeout_s=timeout_s,
                log=log,
            )
            found.notes.append(f"pg_verifybackup: {scratch.pg_verifybackup}")
            found.notes += [f"recovery: {line}" for line in scratch.recovery_log]
            recovered = read_markers(scratch.endpoint(database), database)
            live_now = read_markers(live, database) or []
            if recovered is None:
                found.differences.append(f"the recovery has no dbops.pitr_markers in database {database}")
                return
            differences = compare_markers(live_now, recovered, target_time)
            found.differences += differences
            kept = sum(1 for m in live_now if m.at <= target_time)
            found.notes.append(
                f"{len(recovered)} marker(s) in the recovery, {kept} live marker(s) up to the target; "
                f"recovered {plan.wal_segments} segment(s) of WAL on {scratch.address}"
            )
        except RecoveryFailed as exc:
            found.differences.append(str(exc))
        finally:
            if scratch is not None:
                _cleanup(found, f"scratch server {scratch.address}", lambda: scratch.stop(remove=True, log=log), log)

    result = run_drill(
        repo,
        backup,
        target=f"recovery_target_time {target.value} (scratch server)",
        drill=drill,
        run_id=run_id,
        dag_id=dag_id,
        log=log,
    )
    return {**result, "target_time": target.value, "markers": [first.id, second.id], "marker_database": database}


def _wait_received(
    archive: WalArchive, live: Endpoint, base: RecoveryBase, lsn: int, *, timeout_s: float, log: LogFn
) -> None:
    """Wait until the WAL up to ``lsn`` is sealed; a gap is not waited for (the plan names it)."""
    segment_size = archive.segment_size
    try:
        wait_for_sealed(
            archive,
            live,
            timeline=base.timeline,
            start_lsn=base.start_lsn,
            end_lsn=lsn,
            segment_size=segment_size,
            timeout_s=timeout_s,
            log=log,
            only_end=True,
        )
    except psycopg.OperationalError as exc:
        raise ScratchEnvironmentError(f"the live server cannot be reached: {exc}") from exc
    except WalNotSealed as exc:  # the receiver is behind or down: the WAL check reports that, no verdict here
        raise ScratchEnvironmentError(f"the PITR drill cannot run yet: {exc}") from exc
