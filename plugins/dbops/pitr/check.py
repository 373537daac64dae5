"""The WAL check: is every second since the oldest base backup still recoverable?

Measured on the server in one read (``include/sql/pitr/wal_status.sql``) and on the WAL
archive (its catalog, the receiver's heartbeat); judged by :func:`evaluate`, which is pure
so that every rule has a test without a server. Each problem is one line naming what is
wrong and what it costs; no problem and nothing to check is still a problem (an archive
without a base backup recovers nothing).

The result is also written beside the archive (``check.json``) for the DB Ops page.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dbops.backup.repository import Backup, format_time
from dbops.pitr.wal import WalArchive, WalEntry, check_chain, heartbeat_problem, parse_lsn

CHECK_FILE = "check.json"
# the receiver rewrites its heartbeat every few seconds; older than this, it is not running
HEARTBEAT_MAX_AGE_S = 60.0
# at most this many newly sealed files are re-hashed per check (the rest on the next runs)
REHASH_LIMIT = 500


@dataclass
class WalCheck:
    at: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    lag_s: float | None = None
    lag_bytes: int | None = None
    earliest: str | None = None  # the recovery window, as far as the archive proves it
    latest: str | None = None
    base_backups: int = 0
    segments: int = 0
    rehashed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_server(conn: Any, slot: str) -> dict[str, Any]:
    """The row of ``wal_status.sql`` as a dict (``conn``: a psycopg connection)."""
    from dbops.sqlfiles import load_sql

    cursor = conn.execute(load_sql("pitr/wal_status.sql"), {"slot": slot})
    names = [c.name for c in cursor.description]
    return dict(zip(names, cursor.fetchone(), strict=True))


def read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON file, or None when it is absent or unreadable (a torn write is absent)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def base_details(backup: Backup) -> Mapping[str, Any]:
    """What a base backup's manifest says about its place in the WAL."""
    return backup.manifest.get("details", {})


def _server_problems(server: Mapping[str, Any], slot: str, header: Mapping[str, Any] | None) -> list[str]:
    problems = []
    if server["wal_level"] not in ("replica", "logical"):
        problems.append(
            f"wal_level is {server['wal_level']!r}: point-in-time "
            "recovery needs replica (a restart is needed to change it)"
        )
    if server["max_wal_senders"] < 1:
        problems.append("max_wal_senders is 0: the WAL receiver cannot connect")
    if not server["slot_exists"]:
        problems.append(
            f"replication slot {slot!r} does not exist: the receiver has "
            "never streamed from this server (or the slot was dropped)"
        )
    elif server["slot_type"] != "physical":
        problems.append(f"replication slot {slot!r} is {server['slot_type']}, not physical")
    elif server["slot_wal_status"] == "lost":
        problems.append(
            f"replication slot {slot!r} lost WAL (max_slot_wal_keep_size): "
            "the chain is broken from there; take a base backup"
        )
    elif not server["slot_active"]:
        retained = server.get("retained_bytes") or 0
        problems.append(
            f"replication slot {slot!r} is not in use: no receiver is "
            f"streaming (the server keeps {retained} bytes of WAL for it)"
        )
    if header and header.get("system_identifier") != server["system_identifier"]:
        problems.append(
            f"the WAL archive belongs to system {header.get('system_identifier')}, "
            f"the server is {server['system_identifier']}: "
            "a new cluster needs a new archive (move postgres_wal aside)"
        )
    return problems


def _lag(server: Mapping[str, Any] | None) -> tuple[float | None, int | None]:
    """Seconds and bytes of WAL the server has written and the receiver has not: the data a
    crash of the server now would lose."""
    if not server or server.get("write_lsn") is None:
        return None, None
    lag_bytes = max(int(server["lag_bytes"] or 0), 0)
    if lag_bytes == 0:
        return 0.0, 0
    seconds = server.get("write_lag_s")
    if seconds is None:  # no recent reply with a lag: the last reply's age bounds it
        seconds = server.get("reply_age_s") or 0.0
    return float(seconds), lag_bytes


def evaluate(
    *,
    server: Mapping[str, Any] | None,
    server_error: str | None,
    status: Mapping[str, Any] | None,
    header: Mapping[str, Any] | None,
    entries: list[WalEntry],
    unsealed: Iterable[tuple[str, float]],
    bases: list[Backup],
    rehash_problems: list[str],
    latest_received: datetime | None,
    end_segno: int | None,
    slot: str,
    max_lag_s: float,
    seal_timeout_s: float,
    now: datetime,
) -> WalCheck:
    """Every rule of the WAL check. ``unsealed``: (file name, age in seconds) of completed
    files the sealer has not catalogued; ``bases``: the base backups, oldest first;
    ``latest_received`` and ``end_segno``: what the archive says was received
    (:meth:`WalArchive.latest_received`, :meth:`WalArchive.received_end_segno`)."""
    problems: list[str] = []
    if server_error:
        problems.append(f"the server cannot be read: {server_error}")
    elif server is not None:
        problems += _server_problems(server, slot, header)
    heartbeat = heartbeat_problem(dict(status) if status is not None else None, max_age_s=HEARTBEAT_MAX_AGE_S, now=now)
    if heartbeat:
        problems.append(f"the WAL receiver is not streaming: {heartbeat}")
    lag_s, lag_bytes = _lag(server)
    if lag_s is not None and lag_s > max_lag_s:
        problems.append(
            f"the receiver is {lag_s:.0f} s ({lag_bytes} bytes) behind the server (pitr.max_lag_s {max_lag_s:g}): "
            "a crash of the server now would lose that much"
        )
    late = sorted(name for name, age in unsealed if age > seal_timeout_s)
    if late:
        problems.append(
            f"{len(late)} completed WAL file(s) unsealed for over {seal_timeout_s:g} s: {', '.join(late[:5])}"
        )
    problems += rehash_problems
    earliest = None
    if not bases:
        problems.append("no base backup yet: nothing can be recovered (dbops_base_backup takes one)")
    else:
        segment_size = int((header or {}).get("wal_segment_size") or 16 * 1024 * 1024)
        for base in bases:  # the window starts at the oldest base backup whose chain reaches the end
            details = base_details(base)
            start = parse_lsn(details["start_lsn"])
            end = end_segno if end_segno is not None and end_segno >= start // segment_size else None
            chain = check_chain(entries, int(details["timeline"]), start, segment_size=segment_size, end_segno=end)
            if not chain:
                earliest = details.get("consistent_at")
                break
            problems += [f"WAL chain from base backup {base.backup_id}: {p}" for p in chain]
    latest = format_time(latest_received) if earliest and latest_received else None
    return WalCheck(
        at=format_time(now),
        ok=not problems,
        problems=problems,
        lag_s=lag_s,
        lag_bytes=lag_bytes,
        earliest=earliest,
        latest=latest,
        base_backups=len(bases),
        segments=sum(1 for e in entries if e.kind == "segment"),
    )


def rehash_new(archive: WalArchive, entries: list[WalEntry], since: datetime | None) -> tuple[int, list[str]]:
    """Re-read the files sealed since the last check against their sha256 (a bad disk or a
    hand-edited archive shows here, not on the day of a restore)."""
    fresh = [e for e in entries if since is None or e.sealed_at > since][-REHASH_LIMIT:]
    problems = []
    for entry in fresh:
        problem = archive.verify(entry)
        if problem:
            problems.append(f"sealed WAL file {entry.file}: {problem}")
    return len(fresh), problems


def unsealed_ages(archive: WalArchive, now: datetime) -> list[tuple[str, float]]:
    ages = []
    for path in archive.completed_unsealed():
        try:
            ages.append((path.name, now.timestamp() - path.stat().st_mtime))
        except FileNotFoundError:  # sealed meanwhile
            continue
    return ages


def write_result(archive: WalArchive, result: WalCheck) -> None:
    """``check.json`` beside the archive (atomic, 0600): the DB Ops page reads it."""
    path = archive.root / CHECK_FILE
    tmp = path.with_name(f".{CHECK_FILE}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(result.to_dict(), fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
