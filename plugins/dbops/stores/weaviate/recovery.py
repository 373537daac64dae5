"""Weaviate restore and comparison (no Airflow import).

Weaviate restores a backup's classes only under their own names and only where they do
not exist: classes that exist are refused (dbops never deletes a class). Servers up to
1.23.12 can corrupt data on restore (Weaviate's own warning): refused unless the restore
request acknowledges it (Param ``accept_unsafe_version``). There is no scratch target, so
there is no drill.
"""

from __future__ import annotations

import json
import time
from typing import Any

from dbops.backup.adapter import LogFn, RestoreFailed, RestoreRefused
from dbops.backup.repository import Backup
from dbops.backup.restore import finish
from dbops.backup.runner import source_description
from dbops.stores.weaviate.backup import (
    LAST_UNSAFE_RESTORE_VERSION,
    RECORD_FILE,
    WeaviateApi,
    parse_version,
)
from dbops.stores.weaviate.bootstrap import current_classes

UNSAFE_PARAM = "accept_unsafe_version"


def read_record(backup: Backup) -> dict[str, Any]:
    try:
        return json.loads((backup.path / RECORD_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise RestoreRefused(f"backup {backup.backup_id} has no readable {RECORD_FILE}: {exc}") from None


def check_version(version: str, *, accept_unsafe: bool, log: LogFn) -> None:
    """RestoreRefused on a server <= 1.23.12 (or of an unknown version) unless acknowledged."""
    parsed = parse_version(version)
    unsafe = parsed is None or parsed <= LAST_UNSAFE_RESTORE_VERSION
    if not unsafe:
        return
    last = ".".join(map(str, LAST_UNSAFE_RESTORE_VERSION))
    why = f"version {version!r} cannot be read" if parsed is None else f"runs {version}"
    if not accept_unsafe:
        raise RestoreRefused(
            f"the Weaviate server {why}: Weaviate warns that servers up to {last} can corrupt data on restore. "
            f"Upgrade it to 1.23.13 or later first, or set the Param {UNSAFE_PARAM} to true to restore anyway"
        )
    log(f"WARNING: Weaviate {version} (<= {last}) can corrupt data on restore; restoring because {UNSAFE_PARAM} is set")


def plan_weaviate(api: WeaviateApi, backup: Backup, *, accept_unsafe: bool, log: LogFn) -> dict[str, Any]:
    """Every check that can refuse: the server's version, classes that exist; no change."""
    record = read_record(backup)
    version = api.version()
    check_version(version, accept_unsafe=accept_unsafe, log=log)
    wid, backend, classes = record["id"], record["backend"], sorted(record["classes"])
    existing = sorted(set(current_classes(api.session, api.base_url)) & set(classes))
    already = False
    if existing:
        status = api.backup_status(backend, wid, restore=True)
        already = existing == classes and status is not None and status.get("status") == "SUCCESS"
        if not already:
            raise RestoreRefused(
                f"Weaviate classes {existing} exist: Weaviate restores only classes that do not exist. "
                "Delete them on purpose (after saving what they hold), or restore on another Weaviate"
            )
    return {
        "id": wid,
        "backend": backend,
        "path": record.get("path"),
        "classes": classes,
        "server_version": version,
        "already": already,
        "exists": bool(existing),
    }


def compare_counts(expected: dict[str, Any], actual: dict[str, int]) -> tuple[list[str], list[str]]:
    """Object counts per class against the backup's description: an exact count where the
    classes did not change during the backup, else the bounds counted before and after it."""
    differences, notes = [], []
    for name in expected.get("classes", []):
        have = actual.get(name)
        if name in expected.get("counts", {}):
            if have != expected["counts"][name]:
                differences.append(f"class {name}: {have} objects, the backup had {expected['counts'][name]}")
        elif name in expected.get("count_bounds", {}):
            low, high = expected["count_bounds"][name]
            if have is None or not low <= have <= high:
                differences.append(f"class {name}: {have} objects, the backup had between {low} and {high}")
            else:
                notes.append(
                    f"class {name}: {have} objects, within {low}..{high} counted around the backup (written to)"
                )
        else:
            differences.append(f"class {name}: the backup's description has no count for it")
    return differences, notes


def restore_weaviate(
    api: WeaviateApi, backup: Backup, *, accept_unsafe: bool, timeout: float, poll_every: float = 5.0, log: LogFn
) -> dict[str, Any]:
    """Weaviate's own restore API for the backup this record names (planned again first)."""
    plan = plan_weaviate(api, backup, accept_unsafe=accept_unsafe, log=log)
    wid, backend, classes = plan["id"], plan["backend"], plan["classes"]
    started = time.monotonic()
    if plan["already"]:
        log(f"weaviate backup {wid} was already restored (classes {classes} exist, restore status SUCCESS)")
    else:
        api.post(f"/v1/backups/{backend}/{wid}/restore", {"include": classes})
        deadline = time.monotonic() + timeout
        while True:
            status = api.backup_status(backend, wid, restore=True) or {}
            state = status.get("status")
            log(f"weaviate restore of {wid}: {state}")
            if state == "SUCCESS":
                break
            if state in ("FAILED", "CANCELED"):
                raise RestoreFailed(f"Weaviate restore of {wid} {state}: {status.get('error')}")
            if time.monotonic() > deadline:
                raise RestoreFailed(f"Weaviate restore of {wid} not finished after {timeout:.0f}s (last: {state})")
            time.sleep(poll_every)
    differences, notes = compare_counts(source_description(backup), api.counts(classes))
    return finish(
        {
            "store": "weaviate",
            "backup_id": backup.backup_id,
            "source": None,
            "target": api.base_url,
            "already": plan["already"],
            "replaced": False,
            "classes": classes,
            "server_version": plan["server_version"],
            "seconds": round(time.monotonic() - started, 3),
            "differences": differences,
            "notes": notes,
        },
        log,
    )
