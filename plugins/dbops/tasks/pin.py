"""Tasks of ``dbops_pin``: ``plan`` (every refusal, before any work), ``pin_local`` (the
backup's ``pin`` sidecar) and ``pin_<target>`` (the target's ``pins.json``), each
target's in the one-slot pool that offsite retention runs in.

The rules are in :mod:`dbops.backup.retention` (a pinned backup is never expired) and
:mod:`dbops.offsite.pins`; no Airflow below this layer.
"""

from __future__ import annotations

import logging

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from dbops import runtime
from dbops.config import OFFSITE_TARGETS
from dbops.dagkit import OFFSITE_POOL, in_pool
from dbops.runtime import open_target, runtime_config, target_connection_id
from dbops.tasks.backup import repository
from dbops.tasks.offsite_wal import OFFSITE_STORES

log = logging.getLogger(__name__)
ACTIONS = ("pin", "unpin")
PIN_STORES = list(OFFSITE_STORES)  # every store's backups and the PITR base backups
TARGETS = list(OFFSITE_TARGETS)
MAX_REASON = 500


def check_pin_params(params: dict) -> dict:
    """The Params, checked (ValueError naming the bad one); nothing is read yet."""
    from dbops.backup.repository import check_store_name, check_subject_name, is_backup_id

    store, action = params.get("store"), params.get("action")
    subject = (params.get("subject") or "").strip() or None
    backup_id = (params.get("backup_id") or "").strip()
    reason = (params.get("reason") or "").strip()
    if store not in PIN_STORES:
        raise ValueError(f"store {store!r} is not one of {PIN_STORES}")
    check_store_name(str(store))
    try:
        check_subject_name(subject)
    except ValueError as exc:
        raise ValueError(f"subject {subject!r}: {exc}") from None
    if not is_backup_id(backup_id):
        raise ValueError(
            f"backup_id {backup_id!r} is not a backup id: expected YYYYMMDDTHHMMSSZ[-N], as listed on the DB Ops page"
        )
    if action not in ACTIONS:
        raise ValueError(f"action {action!r} is not one of {list(ACTIONS)}")
    if action == "pin" and not reason:
        raise ValueError("a pin needs a reason (why this backup must stay), e.g. 'audit 2026-Q4'")
    if len(reason) > MAX_REASON:
        raise ValueError(f"reason is {len(reason)} characters, at most {MAX_REASON}")
    return {
        "store": store,
        "subject": subject,
        "backup_id": backup_id,
        "action": action,
        "reason": reason if action == "pin" else None,
    }


@task
def plan() -> dict:
    """Refuse bad Params, a backup that does not exist and a target without a connection,
    before anything is written."""
    context = get_current_context()
    try:
        request = check_pin_params(context["params"])
    except ValueError as exc:
        raise AirflowFailException(f"refused before any work: {exc}") from None
    config = runtime_config()
    repo = repository(config)
    where = f"{request['store']}/{request['subject']}" if request["subject"] else request["store"]
    backups = repo.list(request["store"], request["subject"])
    local = next((b for b in backups if b.backup_id == request["backup_id"]), None)
    if local is None and request["action"] == "pin":
        listed = ", ".join(b.backup_id for b in backups[-5:]) or "none"
        raise AirflowFailException(
            f"refused before any work: no backup {request['backup_id']} of {where} in "
            f"{repo.root} (newest: {listed}); a pin names a backup that exists locally"
        )
    targets = [t for t in config.offsite.targets if runtime.connection_exists(target_connection_id(config, t))]
    for missing in sorted(set(config.offsite.targets) - set(targets)):
        log.warning(
            "offsite target %s has no Airflow connection %r: nothing can be shipped there, its pin is skipped",
            missing,
            target_connection_id(config, missing),
        )
    log.info(
        "%s %s/%s locally%s and on %s%s",
        request["action"],
        where,
        request["backup_id"],
        "" if local else " (not in the local repository: offsite only)",
        targets or "no offsite target",
        f": {request['reason']}" if request["reason"] else "",
    )
    return {**request, "where": where, "local": local is not None, "targets": targets, "by": context["run_id"]}


@task
def pin_local(planned: dict) -> dict:
    """Write the backup's ``pin`` sidecar (pinned with the reason, or unpinned)."""
    from dbops.backup.retention import pin_reason, pin_record, unpin_record

    if not planned["local"]:
        raise AirflowSkipException(f"skipped: {planned['where']}/{planned['backup_id']} is not in the local repository")
    repo = repository(runtime_config())
    backup = next(
        (b for b in repo.list(planned["store"], planned["subject"]) if b.backup_id == planned["backup_id"]), None
    )
    if backup is None:
        raise AirflowFailException(
            f"{planned['where']}/{planned['backup_id']} disappeared from the local repository "
            "since the plan; nothing written"
        )
    wanted = planned["reason"]  # None: unpin
    sidecar = backup.sidecars.get("pin") or {}
    if (sidecar.get("pinned") is True and sidecar.get("reason") == wanted) if wanted else pin_reason(backup) is None:
        log.info(
            "%s/%s is already %s locally; nothing written",
            planned["where"],
            planned["backup_id"],
            f"pinned ({wanted})" if wanted else "unpinned",
        )
        return {"changed": False, "pinned": wanted is not None}
    body = pin_record(wanted, planned["by"]) if planned["action"] == "pin" else unpin_record(planned["by"])
    repo.record(backup, "pin", body)
    log.info(
        "%s %s/%s locally (%s)",
        "pinned" if wanted else "unpinned",
        planned["where"],
        planned["backup_id"],
        backup.path / "pin.json",
    )
    return {"changed": True, "pinned": wanted is not None}


def pin_target_task(target_name: str):
    """``pin_<target>``: the target's ``pins.json`` entry, in the pool of offsite retention."""

    @task(task_id=f"pin_{target_name}", trigger_rule="none_failed", **in_pool(OFFSITE_POOL))
    def pin_target(planned: dict) -> dict:
        from dbops.backup.repository import utc_now
        from dbops.offsite.common import SeriesKey
        from dbops.offsite.pins import set_pin

        if target_name not in planned["targets"]:
            raise AirflowSkipException(f"skipped: {target_name} is not a configured offsite target with a connection")
        config = runtime_config()
        key = SeriesKey(planned["store"], planned["subject"])
        entry = {"reason": planned["reason"], "by": planned["by"]} if planned["action"] == "pin" else None
        with open_target(target_name, config) as target:
            changed = set_pin(target, key, planned["backup_id"], entry, now=utc_now(), log=log.info)
            where = target.location()
        log.info(
            "%s %s/%s in pins.json of %s (%s)%s",
            "pinned" if entry else "unpinned",
            planned["where"],
            planned["backup_id"],
            target_name,
            where,
            "" if changed else ": it already said so",
        )
        return {"target": target_name, "changed": changed, "pinned": entry is not None}

    pin_target.__doc__ = f"Pin or unpin the backup in {target_name}'s pins.json (never expired there while pinned)."
    return pin_target
