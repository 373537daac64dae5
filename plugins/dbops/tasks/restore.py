"""Tasks of ``dbops_restore``, generic over the store registry: ``plan`` (every check that
can refuse, before any work), then one restore task per store, in that store's pool; the
tasks of the other stores skip.

The work is the store's adapter (``dbops.stores.<store>.adapter``) and the generic core
(:mod:`dbops.backup.restore`); no Airflow below this layer.

``source`` s3 or rsync: ``plan`` resolves the backup on that offsite target (never opening
the local repository, which may be gone) and checks the space of the fetch repository; the
restore task fetches it there (:mod:`dbops.offsite.restore`: resumable, checked before
anything is restored) and restores it through the same adapter call as a local backup.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from dbops.dagkit import on_store
from dbops.runtime import runtime_config
from dbops.tasks.backup import repository, skip_unconfigured, store_adapter
from dbops.tasks.pitr import pitr_requested, plan_pitr_restore
from dbops.tasks.summary import push_summary

log = logging.getLogger(__name__)
LOCAL = "local"
SOURCES = ["local", "s3", "rsync"]


def _request(params: dict, adapter=None):
    """The Params as a checked RestoreRequest; refused (never retried) naming the bad one."""
    from dbops.backup.restore import RestoreRefused, check_request

    try:
        request = check_request(
            store=params["store"],
            backup_id=params["backup_id"],
            database=params["database"],
            target=params["target"],
            confirm=params["confirm_overwrite"],
            topics=params["topics"],
            accept_unsafe_version=params.get("accept_unsafe_version", False),
        )
        if adapter is not None:
            adapter.check_request(request)
    except RestoreRefused as exc:
        raise AirflowFailException(f"refused before any work: {exc}") from None
    return request


# --------------------------------------------------------------------------- offsite sources


def offsite_source(config, source: str) -> str | None:
    """The offsite target a run restores from (None: the local repository); refused before
    any work unless it is one of ``offsite.targets`` and has its Airflow connection."""
    from dbops import runtime
    from dbops.runtime import target_connection_id

    if source == LOCAL:
        return None
    configured = list(config.offsite.targets)
    if source not in configured:
        raise AirflowFailException(
            f"refused before any work: source {source!r} is not a configured offsite target "
            f"(offsite.targets: {configured}); use 'local' or one of those"
        )
    conn_id = target_connection_id(config, source)
    if not runtime.connection_exists(conn_id):
        raise AirflowFailException(f"refused before any work: source {source!r} has no Airflow connection {conn_id!r}")
    return source


def decryption(config, items, key_ids=()) -> object | None:
    """The key that decrypts the encrypted ones of ``items`` (OffsiteBackups) and the WAL
    encrypted under ``key_ids``, or None when nothing is encrypted; refused before any work
    when it is missing or another key."""
    from dbops.runtime import offsite_encryption

    shipped = {str(i.envelope.encryption.get("key_id")) for i in items if i.envelope and i.envelope.encryption}
    wanted = sorted(shipped | {str(k) for k in key_ids if k})
    if not wanted:
        return None
    # the key is read whatever offsite.encryption says now: the copies were encrypted when shipped
    enc = offsite_encryption(config.with_overrides({"offsite": {"encryption": True}}))
    other = [k for k in wanted if k != enc.key_id]
    if other:
        raise AirflowFailException(
            f"refused before any work: the offsite copies were encrypted with key id(s) {other}; "
            f"{config.offsite.encryption_key} holds key id {enc.key_id}"
        )
    return enc


def check_space(repo, needed: int, reclaimable: int, what: str) -> dict:
    """Log the size of what will be fetched and the free space of the fetch repository;
    refused before any work when it does not fit."""
    from dbops.offsite.restore import free_bytes
    from dbops.tools import human_bytes

    free = free_bytes(repo.root)
    log.info(
        "fetch repository %s: %s to fetch for %s, %s free%s",
        repo.root,
        human_bytes(needed),
        what,
        human_bytes(free),
        f" (+{human_bytes(reclaimable)} of older fetched copies removed first)" if reclaimable else "",
    )
    if free + reclaimable < needed:
        raise AirflowFailException(
            f"refused before any work: fetching {what} needs {human_bytes(needed)} in {repo.root}, "
            f"only {human_bytes(free + reclaimable)} can be free there (set offsite.fetch_dir to a larger disk)"
        )
    return {"needed_bytes": needed, "free_bytes": free}


def fetch_planned(config, offsite: dict, store: str, subject: str | None, backup_id: str):
    """``(fetch repository, Backup)``: the planned offsite copy fetched (or the copy fetched
    before, checked again), after older copies of its series were removed. A copy that fails
    its checks fails the task at once (a retry cannot mend it); a broken transfer is retried
    and resumes its download."""
    from dbops.offsite.common import OffsiteVerificationError
    from dbops.offsite.restore import fetch_backup, fetch_repository, other_copies
    from dbops.runtime import open_target

    repo = fetch_repository(config, offsite["target"])
    for old in other_copies(repo, store, subject, backup_id):
        log.info("removing the earlier fetched copy %s (one copy per series in the fetch repository)", old.path)
        repo.delete(old)
    # downloads nothing resumed for that long (offsite.stale_staging_hours) are given up
    for stale in repo.sweep(store, subject, older_than=timedelta(hours=config.offsite.stale_staging_hours)):
        log.info("removed the stale download %s", stale)
    enc = None
    if offsite.get("encrypted"):
        from dbops.runtime import offsite_encryption

        enc = offsite_encryption(config.with_overrides({"offsite": {"encryption": True}}))
    with open_target(offsite["target"], config) as target:
        try:
            backup = fetch_backup(target, repo, store, subject, backup_id, encryption=enc, log=log.info)
        except OffsiteVerificationError as exc:
            raise AirflowFailException(
                f"refused: the offsite copy is not intact, nothing was restored: {exc}"
            ) from None
    label = f"{store}/{subject}" if subject else store
    wanted = offsite["manifests"][label]
    if backup.manifest.get("manifest_sha256") != wanted:
        repo.delete(backup)  # not what the plan checked: a new run plans again
        raise AirflowFailException(
            f"refused: {label}/{backup_id} on {offsite['location']} has another "
            "manifest than when the plan chose it; nothing restored, trigger a new run"
        )
    return repo, backup


def _plan_offsite(config, source: str, adapter, request) -> dict:
    """``plan`` of a restore from an offsite target: the copy there, the space, and the
    adapter's plan from its manifest (or, where the adapter reads the backup's own files,
    after the fetch)."""
    from dbops.backup import restore as r
    from dbops.offsite.common import OffsiteError, SeriesKey
    from dbops.offsite.restore import choose, fetch_repository, other_copies, space_needed
    from dbops.runtime import open_target
    from dbops.tools import human_bytes

    try:
        subject = skip_unconfigured(lambda: adapter.restore_subject(request))
        key = r.series_label(request.store, subject)
        with open_target(source, config) as target:
            location = target.location()
            item, skipped = choose(
                target.catalog(log.info), SeriesKey(request.store, subject), request.backup_id, location
            )
    except (r.RestoreRefused, OffsiteError) as exc:
        raise AirflowFailException(f"refused before any work: {exc}") from None
    for line in skipped:
        log.warning("passed over on %s: %s", source, line)
    enc = decryption(config, [item])
    repo = fetch_repository(config, source)
    fetched = next((b for b in repo.list(request.store, subject) if b.backup_id == item.backup_id), None)
    reclaimable = sum(b.total_bytes for b in other_copies(repo, request.store, subject, item.backup_id))
    space = check_space(repo, 0 if fetched else space_needed(item), reclaimable, f"{key}/{item.backup_id}")
    if fetched:
        log.info(
            "%s/%s was fetched before into %s: checked again, not downloaded again", key, item.backup_id, repo.root
        )
    log.info(
        "plan: fetch %s/%s (%s, %s) from %s into %s, then restore it",
        key,
        item.backup_id,
        human_bytes(item.backup.total_bytes),
        "encrypted" if enc else "not encrypted",
        location,
        repo.root,
    )
    deferred = False
    try:
        planned = skip_unconfigured(lambda: adapter.plan_restore(fetched or item.backup, request, log.info))
    except r.RestoreRefused as exc:
        raise AirflowFailException(f"refused before any work: {exc}") from None
    except (OSError, ValueError) as exc:
        # the adapter reads the backup's own files, which only the fetch brings
        deferred = True
        log.info(
            "plan: the %s target checks read the backup's files: they run in restore_%s after the fetch, "
            "before anything is restored (%s)",
            request.store,
            request.store,
            exc,
        )
        planned = r.RestorePlan(
            store=request.store, subject=subject, backup_id=item.backup_id, source=None, target=request.target
        )
    offsite = {
        "target": source,
        "location": location,
        "encrypted": enc is not None,
        "fetch_root": str(repo.root),
        "manifests": {key: item.manifest_sha256},
        "deferred_plan": deferred,
        **space,
    }
    return {
        **planned.to_dict(),
        "path": None,
        "verified": True,
        "offsite": offsite,
        "backup": backup_facts(item.backup),
    }


def backup_facts(backup, now=None) -> dict:
    """Size and age of the backup a restore uses, as the approval shows them."""
    from dbops.backup.repository import utc_now
    from dbops.tools import human_bytes

    age = (now or utc_now()) - backup.taken_at
    hours = int(age.total_seconds() // 3600)
    return {
        "backup_id": backup.backup_id,
        "bytes": backup.total_bytes,
        "size": human_bytes(backup.total_bytes),
        "taken_at": backup.taken_at.isoformat(),
        "age": f"{hours // 24} d {hours % 24} h"
        if hours >= 24
        else f"{hours} h {int(age.total_seconds() // 60) % 60} min",
    }


def approval_needed(planned: dict, confirm: str | None) -> str | None:
    """Why the planned restore needs an approval before it runs (None: it destroys nothing).
    Destructive: data that exists is replaced (a confirmed overwrite, also of a point-in-time
    copy), anything written into the live Redis, and an offsite plan whose target checks wait
    for the fetch while an overwrite is confirmed."""
    details = planned.get("details") or {}
    copy = planned.get("copy") or {}
    if copy.get("overwrite"):
        return f"database {copy['target']} exists and is replaced by the recovered copy"
    if planned.get("pitr") or planned.get("pitr_offsite"):
        return None
    if details.get("live"):
        return f"{planned['target']} is the live Redis (what clients use)"
    if planned.get("overwrite"):
        return f"{planned['target']} exists and its data is replaced"
    if (planned.get("offsite") or {}).get("deferred_plan") and confirm:
        return f"confirm_overwrite names {confirm}: what it replaces is known only after the fetch"
    return None


@task
def plan() -> dict:
    """Refuse bad Params, a missing or malformed backup id, an unconfirmed overwrite, an
    offsite source that is not configured, and a fetch that does not fit, before any work."""
    from dbops.backup import restore as r

    params = get_current_context()["params"]
    source = params.get("source", LOCAL)
    if pitr_requested(params):
        result = _plan_pitr_offsite(params, runtime_config(), source) if source != LOCAL else plan_pitr_restore(params)
        return {**result, "approval": approval_needed(result, params.get("confirm_overwrite"))}
    _request(params)  # the generic checks, before an adapter is built for a store name
    config = runtime_config()
    target_name = offsite_source(config, source)
    if target_name is not None:
        adapter = store_adapter(params["store"], config)
        result = _plan_offsite(config, target_name, adapter, _request(params, adapter))
        return {**result, "approval": approval_needed(result, params.get("confirm_overwrite"))}
    adapter = store_adapter(params["store"], config)
    request = _request(params, adapter)
    try:
        subject = skip_unconfigured(lambda: adapter.restore_subject(request))
        backup = r.resolve_backup(repository(config), request.store, subject, request.backup_id)
        planned = skip_unconfigured(lambda: adapter.plan_restore(backup, request, log.info))
    except r.RestoreRefused as exc:
        raise AirflowFailException(f"refused before any work: {exc}") from None
    if not backup.verified:
        log.warning(
            "backup %s is not verified (%s): its files are checked again before restoring",
            backup.backup_id,
            r.why_unverified(backup),
        )
    what = f"{planned.store} backup {planned.backup_id}" + (f" of {planned.source}" if planned.source else "")
    if planned.already:
        log.info("%s: %s already holds it; the restore task reports it and compares again", what, planned.target)
    else:
        log.info(
            "plan: restore %s into %s%s",
            what,
            planned.target,
            " (confirm_overwrite names it: existing data is replaced)" if planned.overwrite else "",
        )
    result = {
        **planned.to_dict(),
        "path": str(backup.path),
        "verified": backup.verified,
        "offsite": None,
        "backup": backup_facts(backup),
    }
    return {**result, "approval": approval_needed(result, params.get("confirm_overwrite"))}


def restore_task(store: str):
    """``restore_<store>``, in the store's pool; skipped unless the run restores ``store``."""

    @task(task_id=f"restore_{store}", **on_store(store))
    def restore(planned: dict) -> dict:
        from dbops.backup import restore as r
        from dbops.backup.adapter import RestorePlan

        params = get_current_context()["params"]
        if params["store"] != store:
            raise AirflowSkipException(f"skipped: this run restores {params['store']}")
        if planned.get("pitr"):
            raise AirflowSkipException("skipped: this run is a point-in-time recovery (restore_postgres_pitr)")
        if planned.get("pitr_offsite"):
            raise AirflowSkipException(
                "skipped: this run is a point-in-time recovery from offsite (restore_postgres_pitr_offsite)"
            )
        config = runtime_config()
        adapter = store_adapter(store, config)
        offsite = planned.get("offsite")
        try:
            if offsite:
                # fetched (or found fetched) and checked file by file: the local repository is not opened
                repo, backup = fetch_planned(config, offsite, store, planned["subject"], planned["backup_id"])
                plan = RestorePlan.from_dict(planned)
                if offsite["deferred_plan"]:
                    plan = adapter.plan_restore(backup, _request(params, adapter), log.info)
            else:
                repo = repository(config)
                # exactly the backup the plan chose: a rerun restores the same one, even if a newer appeared
                backup = r.resolve_backup(repo, store, planned["subject"], planned["backup_id"])
                r.verify_files(repo, backup, log.info)
                plan = RestorePlan.from_dict(planned)
            result = skip_unconfigured(lambda: adapter.restore(backup, plan, log.info))
        except (r.RestoreRefused, r.CorruptBackup) as exc:
            raise AirflowFailException(f"refused: {exc}") from None
        if offsite:
            result["offsite"] = {
                "target": offsite["target"],
                "location": offsite["location"],
                "fetched": dict(backup.sidecars.get("fetched") or {}),
                "kept": bool(result["differences"]),
            }
            if not result["differences"]:
                # restored and equal: the scratch copy has done its work (a rerun fetches it again)
                repo.delete(backup)
                log.info("removed the fetched copy %s", backup.path)
        if result["differences"]:
            push_summary(result["summary"])  # a failed task has no return value: the run's summary names them
            raise AirflowFailException(
                f"{result['summary']}. The restored {result['target']} is left for inspection. Differences:\n  "
                + "\n  ".join(result["differences"])
            )
        return result

    restore.__doc__ = (
        f"Restore the planned {store} backup (files verified again first), then compare with the backup's description."
    )
    return restore


# --------------------------------------------------------------------------- point in time, from offsite

PITR_WAL_FOLDER = ".restore-wal"  # beside the target's fetched backups, never listed as a series


def pitr_scratch_dir(config) -> Path:
    """Where the scratch server of a recovery from offsite lives: ``pitr.scratch_dir``, else
    the system temp folder (never under ``backup.root``, which may be gone)."""
    return config.pitr.scratch_dir or Path(tempfile.gettempdir()) / "dbops-restore-pitr-scratch"


def _plan_pitr_offsite(params: dict, config, source: str) -> dict:
    """``plan`` of a point-in-time recovery from an offsite target: the Params, the copy
    target, the base backup there (the newest usable one consistent before the target; for
    a restore point name the oldest), the offsite WAL of its cluster, the key and the space,
    before any work. The recovery window is checked by the restore task once the WAL is
    fetched, before the server is started."""
    from dbops.backup.repository import utc_now
    from dbops.backup.restore import RestoreRefused
    from dbops.offsite.common import OffsiteError, SeriesKey
    from dbops.offsite.restore import fetch_repository, other_copies, space_needed, usable_problems
    from dbops.offsite.wal import read_offsite_catalog
    from dbops.pitr.recovery import RecoveryBase
    from dbops.pitr.wal import BASE_STORE
    from dbops.runtime import open_target
    from dbops.tasks.pitr import check_pitr_params

    target_name = offsite_source(config, source)
    if target_name is None:  # only an offsite source is planned here
        raise ValueError(f"source {source!r} is not an offsite target")
    try:
        now = utc_now()
        target, database, copy = check_pitr_params(params, config, now)
        with open_target(target_name, config) as offsite_target:
            location = offsite_target.location()
            catalog = offsite_target.catalog(log.info)
            wal = read_offsite_catalog(offsite_target, log.info)
        copies = sorted(catalog.backups.get(SeriesKey(BASE_STORE), {}).values(), key=lambda b: b.backup.sort_key)
        usable = [c for c in copies if not usable_problems(c)]
        if target.time is not None:
            usable = [c for c in usable if RecoveryBase.of(c.backup).consistent_at <= target.time]
        if not usable:
            before = f" consistent before {target.describe()}" if target.time is not None else ""
            raise RestoreRefused(f"no usable base backup{before} on {location} ({len(copies)} complete there)")
        base = usable[0] if target.kind == "name" else usable[-1]
        if wal.header is None:
            raise RestoreRefused(f"no WAL on {location}: a base backup alone recovers no point in time")
        system_id = str((base.backup.manifest.get("details") or {}).get("system_identifier"))
        if str(wal.header.get("system_identifier")) != system_id:
            raise RestoreRefused(
                f"the WAL on {location} is of system {wal.header.get('system_identifier')}, "
                f"base backup {base.backup_id} of system {system_id}"
            )
    except (RestoreRefused, OffsiteError) as exc:
        raise AirflowFailException(f"refused before any work: {exc}") from None
    enc = decryption(config, [base], [f.key_id for f in wal.files.values()])
    repo = fetch_repository(config, target_name)
    reclaimable = sum(b.total_bytes for b in other_copies(repo, BASE_STORE, None, base.backup_id))
    wal_bytes = sum(f.stored.plain_bytes + (f.stored.bytes if f.encryption else 0) for f in wal.files.values())
    space = check_space(repo, space_needed(base) + wal_bytes, reclaimable, f"base backup {base.backup_id} and the WAL")
    log.info(
        "plan: fetch base backup %s and the WAL after it from %s, recover the cluster to %s in a scratch server; "
        "then %s",
        base.backup_id,
        location,
        target.describe(),
        f"copy {database} into {copy['target']}" + (" (replacing it: confirmed)" if copy["overwrite"] else "")
        if copy
        else "keep the server running",
    )
    offsite = {
        "target": target_name,
        "location": location,
        "encrypted": enc is not None,
        "fetch_root": str(repo.root),
        "manifests": {BASE_STORE: base.manifest_sha256},
        "deferred_plan": False,
        **space,
    }
    pitr = {"base_backup": base.backup_id, "system_identifier": system_id, "target": target.describe()}
    return {"pitr": None, "pitr_offsite": pitr, "database": database or None, "copy": copy, "offsite": offsite}


@task(**on_store("postgres"))
def restore_postgres_pitr_offsite(planned: dict) -> dict:
    """Fetch the planned base backup and the WAL after it from the offsite target, recover
    the cluster in a scratch server to the target, then copy one database into the live
    cluster (and stop the scratch) or keep it running."""
    from dbops.backup.repository import utc_now
    from dbops.backup.restore import RestoreRefused
    from dbops.offsite.common import OffsiteVerificationError
    from dbops.offsite.wal_fetch import fetch_wal_archive
    from dbops.pitr.recovery import RecoveryFailed, restore_pitr, target_from_params
    from dbops.pitr.wal import BASE_STORE
    from dbops.runtime import offsite_encryption, open_target
    from dbops.tasks.pitr import finish_recovery

    pitr = planned.get("pitr_offsite")
    if not pitr:
        raise AirflowSkipException("skipped: this run does not recover a point in time from offsite")
    context = get_current_context()
    params = context["params"]
    config = runtime_config()
    offsite = planned["offsite"]
    repo, base = fetch_planned(config, offsite, BASE_STORE, None, pitr["base_backup"])
    enc = offsite_encryption(config.with_overrides({"offsite": {"encryption": True}})) if offsite["encrypted"] else None
    wal_root = repo.root / PITR_WAL_FOLDER
    try:
        target = target_from_params(params["target_time"], params["target_lsn"], params["target_name"], now=utc_now())
        with open_target(offsite["target"], config) as offsite_target:
            archive = fetch_wal_archive(
                offsite_target,
                wal_root,
                system_identifier=pitr["system_identifier"],
                encryption=enc,
                up_to=target.time,
                base=base,
                log=log.info,
            )
        _plan, scratch = restore_pitr(
            repo,
            archive,
            target,
            now=utc_now(),
            backup_id=base.backup_id,
            scratch_dir=pitr_scratch_dir(config),
            server_bin=config.pitr.server_bin,
            os_user=config.pitr.scratch_os_user,
            log=log.info,
        )
    except (RestoreRefused, RecoveryFailed, OffsiteVerificationError) as exc:
        raise AirflowFailException(
            f"point-in-time recovery from {offsite['target']} failed (the fetched base backup "
            f"and WAL are kept in {repo.root} for the rerun): {exc}"
        ) from None
    # the recovered server needs neither any more: the scratch area is given back
    repo.delete(base)
    shutil.rmtree(wal_root, ignore_errors=True)
    log.info("%s (recovered from %s)", scratch.summary(), offsite["location"])
    return finish_recovery(scratch, target, planned, config, source=offsite["target"])
