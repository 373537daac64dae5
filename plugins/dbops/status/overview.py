"""The overview of the DB Ops page, built from the backup repository catalog.

Everything here is computed from what :class:`BackupRepository` lists (complete backups
only) and from rows already read from the dbops tables: nothing is written, and the
retention verdict is the policy's :meth:`RetentionPolicy.evaluate` on the catalog as it
is now (what the next successful nightly backup would expire), not a deletion.

No Airflow import: the app (``dbops.status.app``) passes in the repository, the stores
and the policy from the dbops config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from dbops.backup.repository import Backup, BackupRepository, as_utc, format_time, parse_time
from dbops.backup.retention import RetentionPolicy, pin_reason

NO_BACKUP_YET = "no backup yet"


def series_label(store: str, subject: str | None) -> str:
    return store if subject is None else f"{store}/{subject}"


def _drill(backup: Backup) -> dict[str, Any] | None:
    """The drill sidecar of a backup as the page shows it, or None when never drilled."""
    drill = backup.sidecars.get("drill")
    if drill is None:
        return None
    return {
        "backup_id": backup.backup_id,
        "ok": drill.get("ok") is True,
        "at": drill.get("at"),
        "target": drill.get("target"),
        "differences": list(drill.get("differences") or []),
        "detail": drill.get("detail"),
    }


def _drill_time(drill: Mapping[str, Any]) -> datetime:
    try:
        return parse_time(drill["at"])
    except (KeyError, TypeError, ValueError):
        return datetime.min.replace(tzinfo=UTC)  # unreadable: oldest


def backup_entry(backup: Backup, now: datetime) -> dict[str, Any]:
    """One backup as the JSON API gives it (sizes in bytes, ages in seconds).

    ``data_bytes``: the backup's data; ``sidecar_bytes``: the manifest, the source description
    and the verify / drill / pin / offsite results beside it; ``total_bytes``: every file the
    manifest lists (data and description: what is verified and shipped)."""
    manifest = backup.manifest
    pinned = pin_reason(backup)
    return {
        "backup_id": backup.backup_id,
        "finished_at": format_time(backup.finished_at),
        "age_seconds": int((now - backup.finished_at).total_seconds()),
        "data_bytes": backup.data_bytes,
        "sidecar_bytes": backup.sidecar_bytes,
        "total_bytes": backup.total_bytes,
        "files": len(manifest.get("files", [])),
        "verified": backup.verified,
        "tool": manifest.get("tool"),
        "tool_version": manifest.get("tool_version"),
        "server_version": manifest.get("server_version"),
        "run_id": backup.run_id,
        "manifest_sha256": manifest.get("manifest_sha256"),
        "drill": _drill(backup),
        "pinned": pinned is not None,  # dbops_pin: never expired, locally or offsite
        "pin_reason": pinned,
    }


def series_overview(
    backups: Iterable[Backup], store: str, subject: str | None, policy: RetentionPolicy, now: datetime
) -> dict[str, Any]:
    """One series: every backup (newest first) with the retention verdict, the last good
    (newest verified) backup and the last drill result."""
    now = as_utc(now, "now")
    listed = sorted(backups, key=lambda b: b.sort_key)
    decisions = {d.backup.backup_id: d for d in policy.evaluate(listed, now)}
    entries = []
    for backup in reversed(listed):
        entry = backup_entry(backup, now)
        decision = decisions[backup.backup_id]
        entry["retention"] = {"keep": decision.keep, "reason": decision.reason}
        entries.append(entry)
    good = [e for e in entries if e["verified"]]
    drills = [e["drill"] for e in entries if e["drill"] is not None]
    would_delete = [e["backup_id"] for e in entries if not e["retention"]["keep"]]
    return {
        "series": series_label(store, subject),
        "store": store,
        "subject": subject,
        "count": len(entries),
        "verified_count": len(good),
        "data_bytes": sum(e["data_bytes"] for e in entries),
        "sidecar_bytes": sum(e["sidecar_bytes"] for e in entries),
        "total_bytes": sum(e["total_bytes"] for e in entries),
        "last_good": good[0] if good else None,
        "newest": entries[0] if entries else None,
        "last_drill": max(drills, key=_drill_time) if drills else None,
        "retention": {
            "keep": len(entries) - len(would_delete),
            "would_delete": would_delete,
        },
        "backups": entries,
    }


def store_overview(repo: BackupRepository, store: str, policy: RetentionPolicy, now: datetime) -> dict[str, Any]:
    """Every series of ``store`` that holds a backup; ``status`` says "no backup yet"
    when there is none."""
    series = []
    for subject in [None, *repo.subjects(store)]:
        backups = repo.list(store, subject)
        if backups:
            series.append(series_overview(backups, store, subject, policy, now))
    return {
        "store": store,
        "status": "ok" if series else NO_BACKUP_YET,
        "error": None,
        "series": series,
    }


def backups_overview(
    repo: BackupRepository, stores: Iterable[str], policy: RetentionPolicy, now: datetime
) -> dict[str, Any]:
    """The backup part of the page: one entry per store; a store whose folder cannot be
    read shows its error, the others are unaffected."""
    now = as_utc(now, "now")
    result = []
    for store in stores:
        try:
            result.append(store_overview(repo, store, policy, now))
        except (OSError, ValueError, RuntimeError) as exc:
            result.append({"store": store, "status": "error", "error": f"{type(exc).__name__}: {exc}", "series": []})
    return {
        "generated_at": format_time(now),
        "backup_root": str(repo.root),
        "retention_policy": {
            "retention_days": policy.retention_days,
            "min_keep": policy.min_keep,
            "keep_weekly": policy.keep_weekly,
            "keep_monthly": policy.keep_monthly,
        },
        "stores": result,
    }


# --------------------------------------------------------------------------- offsite copies


def offsite_copies(overview: Mapping[str, Any], catalogs: Mapping[str, Mapping[str, str] | str]) -> dict[str, Any]:
    """Which offsite targets hold each local backup of ``overview``.

    ``catalogs`` maps a target name to what it holds, ``{"<series>/<backup_id>":
    manifest_sha256}``, or to an error message when it could not be read. A copy counts
    only when its manifest is the local one (same id, same manifest_sha256).
    """
    targets: dict[str, dict[str, Any]] = {}
    for name, held in sorted(catalogs.items()):
        if isinstance(held, str):
            targets[name] = {"error": held, "backups": None}
        else:
            targets[name] = {"error": None, "backups": len(held)}
    copies: dict[str, list[str]] = {}
    for store in overview["stores"]:
        for series in store["series"]:
            for backup in series["backups"]:
                key = f"{series['series']}/{backup['backup_id']}"
                copies[key] = sorted(
                    name
                    for name, held in catalogs.items()
                    if not isinstance(held, str) and held.get(key) == backup["manifest_sha256"]
                )
    return {"targets": targets, "copies": copies}


# --------------------------------------------------------------------------- dbops tables


def maintenance_summary(run: Mapping[str, Any] | None, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The latest maintenance run (its id and times) and what it did: counts per kind and
    action, and every row. None when no maintenance run was recorded yet."""
    if run is None:
        return None
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        per_kind = counts.setdefault(row["kind"], {})
        per_kind[row["action"]] = per_kind.get(row["action"], 0) + 1
    unfinished = sum(1 for r in rows if r.get("finished_at") is None)
    return {
        "run_id": run["run_id"],
        "started_at": _time(run["started_at"]),
        "finished_at": _time(run["finished_at"]),
        "actions": len(rows),
        "unfinished": unfinished,
        "counts": counts,
        "rows": [
            {
                "kind": r["kind"],
                "target": r["target"],
                "action": r["action"],
                "before_bytes": r.get("before_bytes"),
                "after_bytes": r.get("after_bytes"),
                "duration_ms": r.get("duration_ms"),
                "note": "; ".join(str(r["detail"][k]) for k in ("reason", "error") if (r.get("detail") or {}).get(k)),
            }
            for r in rows
        ],
    }


def table_size_chart(
    history: Sequence[Mapping[str, Any]], growth: Sequence[Mapping[str, Any]], top: int
) -> dict[str, Any]:
    """The ``top`` biggest tables of the latest capture: their size at every capture
    (points for the chart) and their growth per day over 1/7/30 days (from the
    monitor's own growth query)."""
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top!r}")
    chosen = list(growth)[:top]  # the growth query orders the biggest first
    names = [f"{g['schema_name']}.{g['table_name']}" for g in chosen]
    points: dict[str, list[list[Any]]] = {name: [] for name in names}
    captures = set()
    for row in sorted(history, key=lambda r: r["captured_at"]):
        name = f"{row['schema_name']}.{row['table_name']}"
        captures.add(row["captured_at"])
        if name in points:
            points[name].append([_time(row["captured_at"]), int(row["total_bytes"])])
    return {
        "captures": [_time(t) for t in sorted(captures)],
        "latest_capture": _time(chosen[0]["captured_at"]) if chosen else None,
        "tables": [
            {
                "table": name,
                "total_bytes": int(g["total_bytes"]),
                "growth_1d": g.get("growth_1d"),
                "growth_7d": g.get("growth_7d"),
                "growth_30d": g.get("growth_30d"),
                "limit_bytes": g.get("limit_bytes"),
                "days_to_limit": g.get("days_to_limit"),
                "points": points[name],
            }
            for name, g in zip(names, chosen, strict=True)
        ],
    }


def _time(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)
