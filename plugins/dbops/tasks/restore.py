"""Tasks of ``dbops_restore``, generic over the store registry: ``plan`` (every check that
can refuse, before any work), then one restore task per store, in that store's pool; the
tasks of the other stores skip.

The work is the store's adapter (``dbops.stores.<store>.adapter``) and the generic core
(:mod:`dbops.backup.restore`); no Airflow below this layer.
"""

from __future__ import annotations

import logging

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from dbops.dagkit import on_store
from dbops.runtime import runtime_config
from dbops.tasks.backup import repository, skip_unconfigured, store_adapter
from dbops.tasks.pitr import pitr_requested, plan_pitr_restore

log = logging.getLogger(__name__)


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


@task
def plan() -> dict:
    """Refuse bad Params, a missing or malformed backup id, and an unconfirmed overwrite, before any work."""
    from dbops.backup import restore as r

    params = get_current_context()["params"]
    if pitr_requested(params):
        return plan_pitr_restore(params)
    _request(params)  # the generic checks, before an adapter is built for a store name
    config = runtime_config()
    adapter = store_adapter(params["store"], config)
    request = _request(params, adapter)
    try:
        subject = skip_unconfigured(lambda: adapter.restore_subject(request))
        backup = r.resolve_backup(repository(config), request.store, subject, request.backup_id)
        planned = skip_unconfigured(lambda: adapter.plan_restore(backup, request, log.info))
    except r.RestoreRefused as exc:
        raise AirflowFailException(f"refused before any work: {exc}") from None
    if not backup.verified:
        log.warning("backup %s is not verified (%s): its files are checked again before restoring",
                    backup.backup_id, r.why_unverified(backup))  # fmt: skip
    what = f"{planned.store} backup {planned.backup_id}" + (f" of {planned.source}" if planned.source else "")
    if planned.already:
        log.info("%s: %s already holds it; the restore task reports it and compares again", what, planned.target)
    else:
        log.info("plan: restore %s into %s%s", what, planned.target,
                 " (confirm_overwrite names it: existing data is replaced)" if planned.overwrite else "")  # fmt: skip
    return {**planned.to_dict(), "path": str(backup.path), "verified": backup.verified}


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
        config = runtime_config()
        adapter = store_adapter(store, config)
        repo = repository(config)
        try:
            # exactly the backup the plan chose: a rerun restores the same one, even if a newer appeared
            backup = r.resolve_backup(repo, store, planned["subject"], planned["backup_id"])
            r.verify_files(repo, backup, log.info)
            result = skip_unconfigured(lambda: adapter.restore(backup, RestorePlan.from_dict(planned), log.info))
        except (r.RestoreRefused, r.CorruptBackup) as exc:
            raise AirflowFailException(f"refused: {exc}") from None
        if result["differences"]:
            raise AirflowFailException(
                f"{result['summary']}. The restored {result['target']} is left for inspection. Differences:\n  "
                + "\n  ".join(result["differences"])
            )
        return result

    restore.__doc__ = f"Restore the planned {store} backup (files verified again first), then compare with the backup's description."
    return restore
