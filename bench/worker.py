"""The dbops side of a pair, in its own process (so its whole process tree can be
measured): the same calls the Airflow tasks make, with the connections and settings
they would read (AIRFLOW_CONN_* and DBOPS_* in the environment).

    python -m bench.worker ACTION '{"json": "arguments"}'

Prints one JSON line with the result last. Actions:
``pg_backup`` (what backup_postgres does for the databases and ``_globals``), ``pg_restore``
(what restore_postgres does), ``pg_restore_offsite`` (what dbops_restore's plan and
restore_postgres do with ``source`` s3 or rsync: fetch, check, restore), ``pg_drill`` (what
dbops_restore_drill's plan and drill_postgres do for one database), ``redis_backup``,
``offsite`` (what ship_<target> does),
``dag_test`` (a whole DAG with ``dag.test()``, after an untimed warm-up run; it prints
``JOB START`` / ``JOB END`` around the timed run), ``pitr_base_backup`` (what the base backup
task does) and ``pitr_restore`` (a point-in-time restore into a scratch server, up to promoted).
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from datetime import UTC, datetime, timedelta

from bench import env  # noqa: F401  (puts the repository and plugins/ on sys.path)

log = logging.getLogger("bench.worker")


def _config(overrides: dict | None = None):
    from dbops.config import load_config

    return load_config().with_overrides(overrides)


def _adapter(config, store: str):
    from dbops import runtime
    from dbops.registry import adapter

    return adapter(store, config, runtime)


def _take(config, store: str, subject: str | None) -> dict:
    """What the task backup_<store> does, for a run of the benchmark's own."""
    from dbops.backup.runner import take_backup
    from dbops.tasks.backup import repository

    outcome = take_backup(
        repository(config),
        _adapter(config, store).series_backup(subject),
        store=store,
        subject=subject,
        run_id=f"bench__{uuid.uuid4().hex}",
        dag_id="dbops_nightly_backup",
        logical_date=datetime.now(UTC),
        force=False,
        stale_staging=timedelta(hours=config.backup.stale_staging_hours),
        log=log.info,
    )
    return outcome.to_dict()


def pg_backup(args: dict) -> dict:
    from dbops.backup.restore import GLOBALS_SUBJECT

    config = _config()
    subjects = [*args["databases"], *([GLOBALS_SUBJECT] if args.get("globals", True) else [])]
    outcomes = [_take(config, "postgres", subject) for subject in subjects]
    return {"backups": outcomes, "total_bytes": sum(o["total_bytes"] for o in outcomes)}


def pg_restore(args: dict) -> dict:
    """What dbops_restore's plan and restore_postgres do."""
    from dbops.backup import restore as r
    from dbops.tasks.backup import repository

    config = _config()
    repo = repository(config)
    adapter = _adapter(config, "postgres")
    request = r.check_request(store="postgres", backup_id="latest", database=args["database"], target=args["target"])
    adapter.check_request(request)
    backup = r.resolve_backup(repo, "postgres", adapter.restore_subject(request), "latest")
    plan = adapter.plan_restore(backup, request, log.info)
    r.verify_files(repo, backup, log.info)
    result = adapter.restore(backup, plan, log.info)
    if result["differences"]:
        raise SystemExit(f"restore differs from the source: {result['differences']}")
    return result


def pg_restore_offsite(args: dict) -> dict:
    """What dbops_restore's plan and restore_postgres do with ``source`` an offsite target: the
    copy chosen from the target's catalog, fetched into the fetch repository and checked file
    by file, restored, compared, and the fetched copy removed. ``settings``: offsite overrides."""
    from dbops.backup.adapter import RestorePlan
    from dbops.tasks.restore import _plan_offsite, _request, fetch_planned, offsite_source

    config = _config({"offsite": args.get("settings", {})})
    source = offsite_source(config, args["source"])
    if source is None:
        raise SystemExit("pg_restore_offsite restores from an offsite target, not 'local'")
    adapter = _adapter(config, "postgres")
    params = {
        "store": "postgres",
        "backup_id": "latest",
        "database": args["database"],
        "target": args["target"],
        "confirm_overwrite": "",
        "topics": [],
    }
    request = _request(params, adapter)
    planned = _plan_offsite(config, source, adapter, request)
    repo, backup = fetch_planned(config, planned["offsite"], "postgres", planned["subject"], planned["backup_id"])
    plan = RestorePlan.from_dict(planned)
    if planned["offsite"]["deferred_plan"]:
        plan = adapter.plan_restore(backup, request, log.info)
    result = adapter.restore(backup, plan, log.info)
    if result["differences"]:
        raise SystemExit(f"restore differs from the source: {result['differences']}")
    result["download"] = (backup.sidecars.get("fetched") or {}).get("download")
    repo.delete(backup)  # restored and equal: the task removes the fetched copy too
    return result


def pg_drill(args: dict) -> dict:
    """What dbops_restore_drill does for one Postgres database: ``plan`` picks the latest
    verified backup of its series, ``drill_postgres`` re-verifies its files, restores it into a
    scratch database, compares with the backup's description, drops the scratch database and
    records ``drill.json``."""
    from types import SimpleNamespace

    from dbops.stores.postgres.backup import series_name
    from dbops.tasks.backup import repository
    from dbops.tasks.drill import drill_backup

    config = _config()
    repo = repository(config)
    subject = series_name(args["database"])
    backup = repo.latest("postgres", subject)
    if backup is None:
        raise SystemExit(f"no verified backup of postgres/{subject} to drill")
    context = {"run_id": f"bench__{uuid.uuid4().hex}", "dag": SimpleNamespace(dag_id="dbops_restore_drill")}
    result = drill_backup(repo, backup, _adapter(config, "postgres"), context)
    if result["differences"] or result["leftovers"]:
        raise SystemExit(f"drill failed: {result['differences']} leftovers {result['leftovers']}")
    return result


def redis_backup(args: dict) -> dict:
    return _take(_config(), "redis", None)


def offsite(args: dict) -> dict:
    from dbops.offsite.sync import ship_all
    from dbops.runtime import open_target
    from dbops.tasks.offsite import policy, repository

    config = _config({"offsite": args.get("settings", {})})
    with open_target(args["target"], config) as target:
        return ship_all(
            target,
            repository(config),
            args["stores"],
            policy(config),
            encryption=None,
            now=datetime.now(UTC),
            dry_run=False,
            log=log.info,
        )


def dag_test(args: dict) -> dict:
    from airflow.dag_processing.dagbag import DagBag

    from bench.env import REPO

    dag = DagBag(dag_folder=str(REPO / "dags" / f"{args['dag_id']}.py")).get_dag(args["dag_id"])
    for t in dag.tasks:
        t.retries = 0
    if args.get("warmup_conf") is not None:  # the first dag.test() in a process costs ~10 s
        warm = dag.test(run_conf=args["warmup_conf"])
        if str(warm.state) != "success" and not str(warm.state).endswith("SUCCESS"):
            raise SystemExit(f"warm-up run of {args['dag_id']} ended {warm.state}")
    print("JOB START", flush=True)
    run = dag.test(run_conf=args.get("conf", {}))
    print("JOB END", flush=True)
    state = str(run.state)
    if not state.lower().endswith("success"):
        raise SystemExit(f"{args['dag_id']} run ended {state}")
    return {"dag_id": args["dag_id"], "state": state}


def _pitr_endpoints(config):
    """(admin, replication) endpoints, from the connections the PITR tasks read."""
    from dbops import runtime

    admin = runtime.endpoint(config.connections.postgres, "postgres")
    replication = runtime.endpoint(config.connections.postgres_replication, "postgres")
    return admin, replication


def _wal_archive(config):
    from pathlib import Path

    from dbops.pitr.wal import WAL_DIR, WalArchive

    return WalArchive(Path(config.backup.root) / WAL_DIR)


def pitr_base_backup(args: dict) -> dict:
    """What the base backup task does: take_base_backup, published once its WAL is sealed."""
    from dbops.pitr.basebackup import take_base_backup
    from dbops.tasks.backup import repository

    config = _config()
    admin, replication = _pitr_endpoints(config)
    backup = take_base_backup(
        repository(config),
        _wal_archive(config),
        endpoint=replication,
        admin=admin,
        compression=config.pitr.base_backup_compression,
        wait_for_wal_s=config.pitr.wait_for_wal_s,
        run_id=f"bench__{uuid.uuid4().hex}",
        dag_id="dbops_pitr_base_backup",
        logical_date=datetime.now(UTC),
        log=log.info,
    )
    return {"backup_id": backup.backup_id, "total_bytes": backup.total_bytes, "path": str(backup.path)}


def pitr_restore(args: dict) -> dict:
    """What the point-in-time restore task does: plan_recovery (every refusal first) then
    recover into a scratch server, returned promoted and left running (the caller stops it).
    ``target_time`` ISO 8601 with its zone, or None for latest."""
    from dbops.pitr.recovery import RecoveryTarget, restore_pitr
    from dbops.tasks.backup import repository

    config = _config()
    now = datetime.now(UTC)
    target_time = args.get("target_time")
    target = RecoveryTarget.parse("time" if target_time else "latest", target_time or "", now=now)
    _plan, server = restore_pitr(
        repository(config),
        _wal_archive(config),
        target,
        now=now,
        scratch_dir=config.pitr.scratch_dir,
        server_bin=config.pitr.server_bin,
        os_user=config.pitr.scratch_os_user,
        log=log.info,
    )
    return server.to_dict()


ACTIONS = {
    f.__name__: f
    for f in (
        pg_backup,
        pg_restore,
        pg_restore_offsite,
        pg_drill,
        redis_backup,
        offsite,
        dag_test,
        pitr_base_backup,
        pitr_restore,
    )
}


def main() -> int:
    # a handler of its own: importing Airflow reconfigures the root logger
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    action, raw = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "{}"
    if action not in ACTIONS:
        raise SystemExit(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
    if action == "dag_test":  # marks its own timed run, after a warm-up one
        result = ACTIONS[action](json.loads(raw))
    else:
        # what a worker has imported before a task runs (its DAG file imports the task modules)
        import dbops.tasks.backup  # noqa: F401
        import dbops.tasks.drill  # noqa: F401
        import dbops.tasks.restore  # noqa: F401

        print("JOB START", flush=True)
        result = ACTIONS[action](json.loads(raw))
        print("JOB END", flush=True)
    print(json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
