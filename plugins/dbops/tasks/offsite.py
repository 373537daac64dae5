"""Tasks of ``dbops_offsite_sync``: ``plan``, then for each target ``ship_<target>`` ->
``verify_<target>`` -> ``retention_<target>``.

The logic lives in :mod:`dbops.offsite`; these tasks turn the run's Params, the config
and the Airflow connections into targets, and failures into clear task failures.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from dbops import runtime
from dbops.config import OFFSITE_TARGETS, DbopsConfig
from dbops.runtime import open_target, runtime_config, target_connection_id

log = logging.getLogger(__name__)
TARGETS = list(OFFSITE_TARGETS)


def _config(params: dict) -> DbopsConfig:
    """The config with this run's offsite retention Params applied (validated again)."""
    return runtime_config({"offsite": {"retention_days": params["retention_days"], "min_keep": params["min_keep"]}})


def repository(config: DbopsConfig):
    from dbops.backup.repository import BackupRepository

    return BackupRepository(config.backup.root, allowed_base=config.backup.allowed_base)


def policy(config: DbopsConfig):
    from dbops.backup.retention import RetentionPolicy

    return RetentionPolicy.of(config.offsite)


def _selected(target: str) -> tuple[DbopsConfig, dict]:
    params = get_current_context()["params"]
    if target not in params["targets"]:
        raise AirflowSkipException(f"skipped: {target} is not among this run's targets {params['targets']}")
    return _config(params), params


@task
def plan() -> dict:
    """Refuse bad Params, an unsafe backup root, a missing connection or key before any
    transfer; log which local series will be considered."""
    from dbops.offsite.sync import local_series

    context = get_current_context()
    params = context["params"]
    config = _config(params)
    repo = repository(config)
    missing = [
        f"{t}: no Airflow connection {target_connection_id(config, t)!r}"
        for t in params["targets"]
        if not runtime.connection_exists(target_connection_id(config, t))
    ]
    if missing:
        raise AirflowFailException("offsite targets without a connection: " + "; ".join(missing))
    enc = runtime.offsite_encryption(config)
    series = [str(k) for k in local_series(repo, params["stores"])]
    events = context.get("triggering_asset_events") or {}
    triggered = sorted(str(getattr(asset, "uri", asset)) for asset in events)
    run_type = str(context["dag_run"].run_type).lower()
    if run_type.endswith("backfill"):
        log.info("backfilled run: offsite sync has no past to catch up; it ships what is complete now")
    log.info(
        "offsite sync of %s from %s to %s (retention %s days, min_keep %s, encryption %s)%s",
        series,
        repo.root,
        params["targets"],
        config.offsite.retention_days,
        config.offsite.min_keep,
        enc.key_id if enc else "off",
        f"; triggered by {triggered}" if triggered else "",
    )
    return {
        "targets": params["targets"],
        "stores": params["stores"],
        "root": str(repo.root),
        "series": series,
        "encryption_key_id": enc.key_id if enc else None,
        "triggered_by": triggered,
    }


def ship_task(target_name: str):
    """``ship_<target>``: every complete, verified local backup not offsite yet."""

    @task(task_id=f"ship_{target_name}")
    def ship() -> dict:
        from dbops.backup.repository import utc_now
        from dbops.offsite.sync import ship_all

        config, params = _selected(target_name)
        with open_target(target_name, config) as target:
            log.info("%s", target.describe())
            # a failed arrival check raises after the other backups were tried; the retry
            # resends the files that were bad (they are removed from staging)
            return ship_all(
                target,
                repository(config),
                params["stores"],
                policy(config),
                encryption=runtime.offsite_encryption(config),
                now=utc_now(),
                dry_run=params["dry_run"],
                log=log.info,
            )

    ship.__doc__ = f"Ship complete local backups to {target_name}; publish each only after its arrival check."
    return ship


def verify_task(target_name: str):
    """``verify_<target>``: what is offsite against the manifests; fails on any mismatch."""

    @task(task_id=f"verify_{target_name}")
    def verify(shipped: dict) -> dict:
        from dbops.offsite.common import OffsiteVerificationError
        from dbops.offsite.sync import verify_all

        config, params = _selected(target_name)
        deep = params["deep_verify"] or config.offsite.deep_verify
        with open_target(target_name, config) as target:
            try:
                result = verify_all(
                    target,
                    repository(config),
                    params["stores"],
                    expected=shipped["expected"],
                    shipped=shipped["shipped"],
                    deep=deep,
                    encryption=runtime.offsite_encryption(config),
                    log=log.info,
                )
            except OffsiteVerificationError as exc:
                raise AirflowFailException(str(exc)) from None  # a retry cannot fix a mismatch
        return {**result, "bytes": shipped["bytes"], "wire_bytes": shipped["wire_bytes"]}

    verify.__doc__ = f"Check every backup on {target_name} against its manifest; fail loudly on a mismatch."
    return verify


def retention_task(target_name: str):
    """``retention_<target>``: the offsite policy, only after this run's verify passed. In the
    one-slot pool of offsite WAL work, which ``dbops_pin`` uses too: retention never reads
    the target's pins.json while a pin changes it."""
    from dbops.dagkit import OFFSITE_POOL, in_pool

    @task(task_id=f"retention_{target_name}", **in_pool(OFFSITE_POOL))
    def retention(verified: dict) -> dict:
        from dbops.backup.repository import utc_now
        from dbops.offsite.retention import apply_offsite_retention

        config, params = _selected(target_name)
        if not verified:
            raise AirflowFailException("retention needs this run's verification result; nothing deleted")
        with open_target(target_name, config) as target:
            catalog = target.catalog(log.info)
            return apply_offsite_retention(
                target,
                catalog,
                repository(config),
                params["stores"],
                policy(config),
                now=utc_now(),
                dry_run=params["dry_run"] or params["retention_dry_run"],
                stale_after=timedelta(hours=config.offsite.stale_staging_hours),
                log=log.info,
            )

    retention.__doc__ = (
        f"Apply offsite retention on {target_name} (days, tiers, min_keep, pins); dry run logs the plan."
    )
    return retention
