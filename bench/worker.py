"""The dbops side of a pair, in its own process (so its whole process tree can be
measured): the same calls the Airflow tasks make, with the connections and settings
they would read (AIRFLOW_CONN_* and DBOPS_* in the environment).

    python -m bench.worker ACTION '{"json": "arguments"}'

Prints one JSON line with the result last. Actions:
``pg_backup`` (what backup_postgres does for the databases and ``_globals``), ``pg_restore``
(what restore_postgres does), ``redis_backup``, ``offsite`` (what ship_<target> does) and
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
    f.__name__: f for f in (pg_backup, pg_restore, redis_backup, offsite, dag_test, pitr_base_backup, pitr_restore)
}


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    action, raw = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "{}"
    if action not in ACTIONS:
        raise SystemExit(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
    result = ACTIONS[action](json.loads(raw))
    print(json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
