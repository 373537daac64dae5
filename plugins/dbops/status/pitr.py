"""The point-in-time recovery part of the DB Ops page: the recovery window, the WAL
receiver, the last WAL check and the base backups with their drills.

Built from what the PITR parts leave beside the archive and in the repository: the WAL
check's ``check.json`` (:mod:`dbops.pitr.check`), the receiver's heartbeat
(``receiver.json``) and the ``postgres_pitr`` series. Nothing is written and nothing is
re-measured here: the window and the lag are the last check's findings, shown with their
age, so a check that stopped running shows as stale instead of as a fresh pass.

No Airflow import: the app (``dbops.status.app``) passes in the repository and the paths.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from dbops.backup.repository import Backup, BackupRepository, as_utc, format_time, parse_time
from dbops.pitr import check
from dbops.pitr.wal import BASE_STORE, WalArchive
from dbops.status.overview import backup_entry

# the WAL check runs every 15 minutes: a result older than two missed runs is stale
CHECK_STALE_AFTER_S = 30 * 60

NEVER_CHECKED = "never checked"
NEVER_REPORTED = "never reported"
NO_BASE_BACKUP_YET = "no base backup yet"
PITR_OFF = "point-in-time recovery is off (pitr.enabled: false)"
# what the base backup details of a manifest show on the page
BASE_DETAILS = ("timeline", "start_lsn", "stop_lsn", "consistent_at", "compression", "server_version")


def _age_s(at: Any, now: datetime) -> float | None:
    """Seconds from ``at`` (an ISO time) to now, or None when ``at`` is not a readable time."""
    try:
        return round((now - parse_time(at)).total_seconds(), 1)
    except (TypeError, ValueError):
        return None


def _number(value: Any) -> float | int | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def receiver_state(
    status: Mapping[str, Any] | None, now: datetime, max_age_s: float = check.HEARTBEAT_MAX_AGE_S
) -> dict[str, Any]:
    """The receiver as its heartbeat tells it. ``state`` is what it reported
    ("streaming", "starting", "error"), or "never reported" (no heartbeat file), "unreadable"
    (no readable heartbeat time) or "not running" (heartbeat older than ``max_age_s``:
    a killed receiver cannot say so itself). ``alive`` only for a fresh heartbeat."""
    if status is None:
        return {
            "state": NEVER_REPORTED,
            "alive": False,
            "reported_state": None,
            "heartbeat_at": None,
            "heartbeat_age_s": None,
            "error": None,
            "pid": None,
            "started_at": None,
            "timeline": None,
            "last_sealed": None,
        }
    age = _age_s(status.get("heartbeat_at"), now)
    reported = status.get("state") if isinstance(status.get("state"), str) else None
    if age is None:
        state = "unreadable"
    elif age > max_age_s:
        state = "not running"
    else:
        state = reported or "unreadable"
    return {
        "state": state,
        "alive": age is not None and age <= max_age_s and reported in ("streaming", "starting"),
        "reported_state": reported,
        "heartbeat_at": status.get("heartbeat_at"),
        "heartbeat_age_s": age,
        "error": status.get("error") or None,
        "pid": status.get("pid"),
        "started_at": status.get("started_at"),
        "timeline": status.get("timeline"),
        "last_sealed": status.get("last_sealed"),
    }


def last_check(
    result: Mapping[str, Any] | None, now: datetime, stale_after_s: float = CHECK_STALE_AFTER_S
) -> dict[str, Any]:
    """The last WAL check (``check.json``). ``status``: "ok", "failed" (with its problems),
    "stale" (older than ``stale_after_s``, whatever it said then), "unreadable" or
    "never checked"."""
    if result is None:
        return {
            "status": NEVER_CHECKED,
            "at": None,
            "age_s": None,
            "ok": None,
            "stale": False,
            "problems": [],
            "lag_s": None,
            "lag_bytes": None,
            "segments": None,
            "base_backups": None,
            "rehashed": None,
        }
    age = _age_s(result.get("at"), now)
    ok = result.get("ok") is True  # anything but a literal true is not a pass
    problems = [str(p) for p in result.get("problems") or []] if isinstance(result.get("problems"), list) else []
    if not ok and not problems:
        problems = ["the check did not pass and named no problem"]
    stale = age is None or age > stale_after_s
    if age is None:
        status = "unreadable"
    elif stale:
        status = "stale"
    else:
        status = "ok" if ok else "failed"
    return {
        "status": status,
        "at": result.get("at"),
        "age_s": age,
        "ok": ok,
        "stale": stale,
        "problems": problems,
        "lag_s": _number(result.get("lag_s")),
        "lag_bytes": _number(result.get("lag_bytes")),
        "segments": _number(result.get("segments")),
        "base_backups": _number(result.get("base_backups")),
        "rehashed": _number(result.get("rehashed")),
    }


def base_backup_entry(backup: Backup, now: datetime) -> dict[str, Any]:
    """A base backup as the page lists it: the usual backup entry (size, verified, drill)
    plus where it sits in the WAL and whether it is pinned."""
    entry = backup_entry(backup, now)
    details = check.base_details(backup)
    entry["details"] = {key: details.get(key) for key in BASE_DETAILS}
    pin = backup.sidecars.get("pin") or {}
    entry["pinned"] = pin.get("pinned") is True
    entry["pin_reason"] = pin.get("reason") if entry["pinned"] else None
    return entry


def pitr_overview(
    repo: BackupRepository,
    wal_root: Path,
    now: datetime,
    *,
    enabled: bool,
    max_lag_s: float | None = None,
    stale_after_s: float = CHECK_STALE_AFTER_S,
) -> dict[str, Any]:
    """The PITR part of the page. ``wal_root`` is ``<backup.root>/postgres_wal``.

    The window is the last check's (``earliest``: the oldest base backup's consistent
    point, ``latest``: the last WAL received), ``proven`` only when that check passed and
    is not stale. The receiver's lag is the check's measurement (the server's view).
    """
    now = as_utc(now, "now")
    result: dict[str, Any] = {
        "enabled": enabled,
        "generated_at": format_time(now),
        "wal_root": str(wal_root),
        "max_lag_s": max_lag_s,
        "stale_after_s": stale_after_s,
    }
    if not enabled:
        return {
            **result,
            "message": PITR_OFF,
            "window": None,
            "receiver": None,
            "last_check": None,
            "base_backups": [],
            "base_backups_status": None,
            "base_backups_error": None,
        }
    raw = check.read_json(wal_root / check.CHECK_FILE)
    checked = last_check(raw, now, stale_after_s)
    receiver = receiver_state(WalArchive(wal_root).status(), now)
    receiver["lag_s"], receiver["lag_bytes"], receiver["lag_as_of"] = (
        checked["lag_s"],
        checked["lag_bytes"],
        checked["at"],
    )
    receiver["lag_over_limit"] = max_lag_s is not None and checked["lag_s"] is not None and checked["lag_s"] > max_lag_s
    window = {
        "earliest": (raw or {}).get("earliest"),
        "latest": (raw or {}).get("latest"),
        "as_of": checked["at"],
        "proven": checked["status"] == "ok",
    }
    try:
        backups = sorted(repo.list(BASE_STORE), key=lambda b: b.sort_key, reverse=True)
        entries = [base_backup_entry(b, now) for b in backups]
        status, error = ("ok" if entries else NO_BASE_BACKUP_YET), None
    except (OSError, ValueError, RuntimeError) as exc:
        entries, status, error = [], "error", f"{type(exc).__name__}: {exc}"
    return {
        **result,
        "message": None,
        "window": window,
        "receiver": receiver,
        "last_check": checked,
        "base_backups": entries,
        "base_backups_status": status,
        "base_backups_error": error,
    }
