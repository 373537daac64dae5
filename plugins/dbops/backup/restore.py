"""Restoring backups and restore drills: the steps every store shares (no Airflow import).

A restore or a drill always goes the same way; the store-specific steps are the store's
adapter (:class:`dbops.backup.adapter.StoreAdapter`), the rest is here:

1. **resolve** the backup (:func:`resolve_backup`): ``"latest"`` is the newest *verified*
   backup of the series; an exact id must be in the repository's id format
   (``YYYYMMDDTHHMMSSZ[-N]``), checked before any path is built from it (``../../etc``
   never reaches the file system);
2. **verify** its files again (:func:`verify_files`, every sha256 against the manifest): a
   corrupted backup is refused, whatever its sidecars said last week;
3. **plan** (the adapter): check the target, and the confirm rule (:func:`confirm_overwrite`):
   restoring over something that exists needs ``confirm_overwrite`` to name the target
   exactly; refused before anything is written;
4. **restore** (the adapter, with the store's tool), building the new copy before anything
   old is set aside;
5. **compare** (the adapter) the result with the backup's own description
   (``source_description.json``: taken in the dump's snapshot or read from the artifact).

A drill (:func:`run_drill`) does 2, 4 and 5 into scratch targets, records ``{ok,
differences, target, seconds}`` as the backup's ``drill`` sidecar (a failed drill makes the
backup count as not verified, so retention keeps older good ones), and the adapter removes
its scratch targets afterwards, also when it failed. A drill its environment stopped (a
port in use, a full disk) records nothing: that is no verdict on the backup.
"""

from __future__ import annotations

import errno
import hashlib
import re
import time
from collections.abc import Callable
from typing import Any

from dbops.backup.adapter import (  # noqa: F401  (re-exported: the recovery vocabulary)
    DrillComparison,
    DrillEnvironmentError,
    NotRetryable,
    RestoreFailed,
    RestorePlan,
    RestoreRefused,
    RestoreRequest,
)
from dbops.backup.repository import (
    Backup,
    BackupRepository,
    CheckResult,
    check_store_name,
    check_subject_name,
    parse_backup_id,
)

LogFn = Callable[[str], None]

LATEST = "latest"
# What the DAG's Param accepts (the JSON schema pattern); check_backup_id is the real check.
BACKUP_ID_PATTERN = r"^(latest|[0-9]{8}T[0-9]{6}Z(-[1-9][0-9]*)?)$"
DRILL_PREFIX = "dbops_drill_"
GLOBALS_SUBJECT = "_globals"
PG_MAX_NAME_BYTES = 63
# What a restore marks its target with (each store keeps it where it can: a database setting,
# a collection), so a rerun recognises a target that already holds this backup.
MARKER_PREFIX = "dbops-restore "


class CorruptBackup(NotRetryable, RuntimeError):
    """The backup's files no longer match its manifest (``checks`` says which)."""

    def __init__(self, message: str, checks: list[CheckResult]) -> None:
        super().__init__(message)
        self.checks = checks


# --------------------------------------------------------------------------- names and rules


def check_backup_id(backup_id: Any) -> str:
    """``"latest"`` or a canonical backup id; RestoreRefused for anything else (before any I/O)."""
    if backup_id == LATEST:
        return LATEST
    try:
        parse_backup_id(backup_id)
    except ValueError:
        raise RestoreRefused(
            f"backup_id {backup_id!r} is neither 'latest' nor a backup id: expected YYYYMMDDTHHMMSSZ[-N] "
            "(e.g. 20260301T020000Z), as listed in the backup repository"
        ) from None
    return backup_id


def series_label(store: str, subject: str | None) -> str:
    return f"{store}/{subject}" if subject else store


def _fit(head: str, tail: str, limit: int) -> str:
    """``head + tail`` within ``limit`` bytes; a long head is cut and given a short hash."""
    name = head + tail
    if len(name.encode()) <= limit:
        return name
    digest = hashlib.sha1(head.encode()).hexdigest()[:8]
    room = limit - len(tail.encode()) - len(digest) - 1
    cut = head.encode()[:room].decode(errors="ignore")
    return f"{cut}_{digest}{tail}"


def default_target(database: str, backup_id: str) -> str:
    """``<database>_restored_<backupid-lowercase>``; refused when longer than a name may be."""
    name = f"{database}_restored_{backup_id.lower()}"
    if len(name.encode()) > PG_MAX_NAME_BYTES:
        raise RestoreRefused(
            f"the default target name {name!r} is longer than {PG_MAX_NAME_BYTES} bytes; give a shorter target"
        )
    return name


def drill_name(subject: str, backup_id: str) -> str:
    """The scratch database of a drill: ``dbops_drill_<subject>_<backupid-lowercase>`` (<= 63 bytes)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", subject)
    return _fit(f"{DRILL_PREFIX}{safe}", f"_{backup_id.lower()}", PG_MAX_NAME_BYTES)


def drill_topic(topic: str, backup_id: str) -> str:
    """The scratch topic a Kafka drill recreates ``topic`` as (<= 249 characters)."""
    head = f"{DRILL_PREFIX}{backup_id.lower()}_"
    if len(head) + len(topic) <= 249:
        return head + topic
    digest = hashlib.sha1(topic.encode()).hexdigest()[:8]
    return f"{head}{topic[: 249 - len(head) - len(digest) - 1]}_{digest}"


def confirm_overwrite(*, target: str, reason: str | None, confirm: str) -> bool:
    """Whether overwriting ``target`` is confirmed; RestoreRefused when it must be and is not.

    ``reason`` says what would be overwritten ("database x exists", "the live Redis"), or
    None when nothing is. ``confirm`` must then equal ``target`` exactly. A non-empty
    ``confirm`` naming anything else is refused in every case: it shows the operator
    meant another target than the one this run would write to.
    """
    confirm = confirm or ""
    if confirm and confirm != target:
        raise RestoreRefused(
            f"confirm_overwrite is {confirm!r} but the target is {target!r}: it must name the target exactly "
            "(or stay empty when nothing is overwritten)"
        )
    if reason and confirm != target:
        raise RestoreRefused(
            f"{reason}, and restoring would overwrite it. To do that on purpose, set "
            f"confirm_overwrite to {target!r} (exactly); or restore into a new target"
        )
    return confirm == target


def check_request(
    *,
    store: str,
    backup_id: Any,
    database: str = "",
    target: str = "",
    confirm: str = "",
    topics: Any = (),
    accept_unsafe_version: bool = False,
) -> RestoreRequest:
    """The Params that can be judged without I/O and without knowing the store; RestoreRefused
    naming the first bad one. The store's own rules follow in its adapter's ``check_request``."""
    from dbops.config import ALL_STORES

    if store not in ALL_STORES:
        raise RestoreRefused(f"store {store!r} is not one of {', '.join(ALL_STORES)}")
    backup_id = check_backup_id(backup_id)
    database, target, confirm = (v or "" for v in (database, target, confirm))
    for name, value in (("database", database), ("target", target), ("confirm_overwrite", confirm)):
        if not isinstance(value, str):
            raise RestoreRefused(f"{name} must be a string, got {value!r}")
    topics = tuple(topics or ())
    if topics and store != "kafka":
        raise RestoreRefused("topics applies to store kafka only")
    if any(not isinstance(t, str) for t in topics):
        raise RestoreRefused(f"topics must be strings, got {list(topics)}")
    return RestoreRequest(store, backup_id, database, target, confirm, topics, bool(accept_unsafe_version))


# --------------------------------------------------------------------------- the backup


def resolve_backup(repo: BackupRepository, store: str, subject: str | None, backup_id: str) -> Backup:
    """The backup to restore: the newest verified one for ``"latest"``, else exactly ``backup_id``.

    The id is checked first; nothing on disk is looked at for a malformed one.
    """
    backup_id = check_backup_id(backup_id)
    try:
        check_store_name(store)
        check_subject_name(subject)
    except ValueError as exc:
        raise RestoreRefused(str(exc)) from None
    where = series_label(store, subject)
    backups = repo.list(store, subject)
    if backup_id == LATEST:
        verified = [b for b in backups if b.verified]
        if verified:
            return verified[-1]
        if not backups:
            raise RestoreRefused(f"no backups of {where} in {repo.root}")
        newest = backups[-1]
        raise RestoreRefused(
            f"no verified backup of {where}: {len(backups)} backup(s), none verified "
            f"(newest {newest.backup_id}: {why_unverified(newest)})"
        )
    for backup in backups:
        if backup.backup_id == backup_id:
            return backup
    listed = ", ".join(b.backup_id for b in backups[-5:]) or "none"
    raise RestoreRefused(f"no backup {backup_id} of {where} in {repo.root} (newest: {listed})")


def why_unverified(backup: Backup) -> str:
    last = backup.last_verification()
    if last is None:
        return "verified"
    if last.get("ok") is True:
        return f"last {last.get('kind')} ok at {last.get('at')}"
    detail = last.get("differences") or last.get("detail") or ""
    if isinstance(detail, list):
        detail = "; ".join(str(d) for d in detail[:3])
    return f"{last.get('kind')} failed at {last.get('at')}: {detail}"


def verify_files(repo: BackupRepository, backup: Backup, log: LogFn) -> list[CheckResult]:
    """Every file's size and sha256 against the manifest again; CorruptBackup if any differs."""
    started = time.monotonic()
    checks = repo.verify(backup)
    failed = [c for c in checks if not c["ok"]]
    where = f"{series_label(backup.store, backup.subject)}/{backup.backup_id}"
    if failed:
        detail = "; ".join(f"{c['name']}: {c['detail']}" for c in failed[:10])
        raise CorruptBackup(f"backup {where} is corrupted, refusing to restore it: {detail}", checks)
    summary = next((c["detail"] for c in checks if c["name"] == "files"), "")
    log(f"verified {where} again: {summary} ({time.monotonic() - started:.1f}s)")
    return checks


def restore_marker(store: str, source: str | None, backup_id: str) -> str:
    return f"{MARKER_PREFIX}{store}/{source or ''}/{backup_id}"


def restore_summary(result: dict[str, Any]) -> str:
    what = f"{result['store']} backup {result['backup_id']}"
    if result.get("source"):
        what += f" of {result['source']}"
    if result.get("already"):
        head = f"{result['target']} already holds {what}: nothing restored again"
    elif result.get("replaced"):
        aside = result.get("set_aside")
        kept = f", the old one set aside as {', '.join(aside) if isinstance(aside, list) else aside}" if aside else ""
        head = f"replaced {result['target']} with {what}{kept} in {result['seconds']:.1f}s"
    else:
        head = f"restored {what} into {result['target']} (created) in {result['seconds']:.1f}s"
    if result["differences"]:
        # the differences themselves (the first few), not only their number
        shown = "; ".join(result["differences"][:3])
        more = f" (+{len(result['differences']) - 3} more)" if len(result["differences"]) > 3 else ""
        return f"{head}; {len(result['differences'])} difference(s) from the source: {shown}{more}"
    return f"{head}; equal to the source as described at backup time"


def finish(result: dict[str, Any], log: LogFn) -> dict[str, Any]:
    result["summary"] = restore_summary(result)
    for note in result.get("notes", []):
        log(f"note: {note}")
    for difference in result["differences"]:
        log(f"DIFFERENCE: {difference}")
    log(result["summary"])
    return result


# --------------------------------------------------------------------------- drills


def _cleanup(comparison: DrillComparison, what: str, action: Callable[[], Any], log: LogFn) -> None:
    try:
        action()
    except Exception as exc:  # keep the drill's own result; say what is left behind
        comparison.leftovers.append(f"{what}: {type(exc).__name__}: {exc}")
        log(f"could not remove scratch {what}: {exc}")


_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left for the drill's scratch copy",
    errno.EDQUOT: "the drill's scratch copy hit a disk quota",
    errno.EADDRINUSE: "the drill's port is in use",
    errno.EACCES: "the drill may not write its scratch folder",
}


def _environment_problem(exc: BaseException) -> str | None:
    """Why ``exc`` is the drill environment's fault (disk, port, permissions), or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _ENVIRONMENT_ERRNOS:
            return _ENVIRONMENT_ERRNOS[seen.errno]
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    if "No space left on device" in text:
        return _ENVIRONMENT_ERRNOS[errno.ENOSPC]
    return None


def run_drill(
    repo: BackupRepository,
    backup: Backup,
    *,
    target: str | list[str] | None,
    drill: Callable[[Backup, DrillComparison], None],
    run_id: str,
    dag_id: str,
    log: LogFn,
    files_checked_by: str | None = None,
) -> dict[str, Any]:
    """Verify the files, restore into scratch and compare (``drill``), record the ``drill``
    sidecar ``{ok, differences, target, seconds, ...}`` and return it. ``files_checked_by``
    names the step of this same run that already checked every file's sha256 against this
    manifest (the fetch of an offsite copy): they are not read a second time.

    A failure after the backup was chosen counts against the backup (``ok`` false): a
    corrupted file, a restore that fails, a difference. A failure of the drill's
    environment (DrillEnvironmentError from the adapter; a full disk, a port in use) is
    not a verdict: nothing is recorded and the error goes up. The sidecar makes the backup count
    as not verified until a later drill passes; scratch targets are removed by ``drill``
    itself (in ``finally``), and what it could not remove is reported as ``leftovers``.
    """
    started = time.monotonic()
    comparison = DrillComparison()
    where = f"{series_label(backup.store, backup.subject)}/{backup.backup_id}"
    try:
        if files_checked_by:
            log(f"{where}: every file's sha256 was checked against the manifest by {files_checked_by}; not read again")
        else:
            verify_files(repo, backup, log)
        drill(backup, comparison)
    except CorruptBackup as exc:
        comparison.differences += [f"corrupted: {c['name']}: {c['detail']}" for c in exc.checks if not c["ok"]]
    except DrillEnvironmentError:
        raise  # no verdict: the backup's record stays as it was
    except Exception as exc:
        environment = _environment_problem(exc)
        if environment:
            raise DrillEnvironmentError(f"{environment}: {type(exc).__name__}: {exc}") from exc
        comparison.differences.append(f"restore failed: {type(exc).__name__}: {exc}")
    result = {
        "ok": not comparison.differences,
        "differences": comparison.differences,
        "target": target,
        "seconds": round(time.monotonic() - started, 3),
        "notes": comparison.notes,
        "leftovers": comparison.leftovers,
        "backup_id": backup.backup_id,
        "series": series_label(backup.store, backup.subject),
        "run_id": run_id,
        "dag_id": dag_id,
    }
    repo.record(backup, "drill", result)
    verdict = "passed" if result["ok"] else f"FAILED with {len(comparison.differences)} mismatch(es)"
    log(f"drill of {where} {verdict} in {result['seconds']:.1f}s (recorded in {backup.path / 'drill.json'})")
    for difference in comparison.differences:
        log(f"MISMATCH {where}: {difference}")
    return result
