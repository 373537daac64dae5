"""dbops_pin as Airflow runs it (``dag.test``), against the real local sshd and SeaweedFS: a pin
is written locally and into both targets' pins.json, holds its backup offsite past the
window even after the local copy is gone, and an unpin lets offsite retention take it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from dbops.backup.repository import BackupRepository
from dbops.backup.retention import RetentionPolicy, pin_reason
from dbops.offsite.pins import PINS_REL, read_pins
from dbops.offsite.retention import apply_offsite_retention
from dbops.offsite.sync import ship_all
from dbops.runtime import open_target, runtime_config
from dbops.status.overview import backup_entry
from tests.conftest import run_dag, task_result
from tests.offsite_support import daily_backups, empty_prefix, remote_dir, remove_remote
from tests.support import Log, task_states

pytestmark = pytest.mark.integration
UTC = UTC
TARGETS = ("rsync", "s3")


def pin_conf(backup_id: str, action: str, reason: str = "") -> dict:
    # every Param given: dag.test writes a run's conf into the DAG's Params (it would leak)
    return {"store": "redis", "subject": "", "backup_id": backup_id, "action": action, "reason": reason}


def offsite_retention(config, repo, now) -> dict[str, dict]:
    found = {}
    for name in TARGETS:
        with open_target(name, config) as target:
            report = apply_offsite_retention(
                target,
                target.catalog(Log()),
                repo,
                ["redis"],
                RetentionPolicy.of(config.offsite),
                now=now,
                dry_run=False,
                stale_after=timedelta(hours=48),
                log=Log(),
            )
            found[name] = report["series"][0]
    return found


def test_a_pin_holds_a_backup_offsite_past_its_window_until_unpinned(devstack, dagbag, dbops_variable, tmp_path):
    now = datetime.now(UTC)
    repo = BackupRepository(tmp_path / "backups")
    backups = daily_backups(repo, "redis", 8, now=now, size=256)  # ages 1 h .. 7 days 1 h
    s3 = devstack.service("s3")
    remote, prefix = remote_dir(devstack), f"pin-test-{uuid.uuid4().hex[:12]}"
    bucket = s3.environment()["DBOPS_OFFSITE__S3_BUCKET"]
    variable = {
        "backup": {"root": str(repo.root)},
        "offsite": {
            "rsync_remote_dir": str(remote),
            "s3_prefix": prefix,
            "s3_bucket": bucket,
            "retention_days": 5,
            "min_keep": 2,
            "keep_weekly": 0,
            "keep_monthly": 0,
        },
    }
    dbops_variable(variable)
    config = runtime_config(variable)  # outside a task the Variable is not read
    pin_id = backups[0].backup_id  # 7 days 1 h old: outside the 5-day offsite window
    dag = dagbag.get_dag("dbops_pin")
    try:
        for name in TARGETS:  # all eight offsite (a window long enough to ship them)
            with open_target(name, config) as target:
                ship_all(
                    target, repo, ["redis"], RetentionPolicy(60, 2), encryption=None, now=now, dry_run=False, log=Log()
                )

        refused = run_dag(dag, pin_conf("20200101T000000Z", "pin", "audit"))
        assert refused.state == "failed" and task_states(refused)["plan"] == "failed"
        for name in TARGETS:  # refused before anything was written
            with open_target(name, config) as target:
                assert target.read_file(PINS_REL, Log()) is None

        pinned = run_dag(dag, pin_conf(pin_id, "pin", "audit 2026-Q4"))
        assert pinned.state == "success", task_states(pinned)
        local = repo.list("redis")[0]
        assert pin_reason(local) == "audit 2026-Q4" and local.sidecars["pin"]["by"] == pinned.run_id
        entry = backup_entry(local, now)
        assert entry["pinned"] is True and entry["pin_reason"] == "audit 2026-Q4"
        for name in TARGETS:
            assert task_result(pinned, f"pin_{name}") == {"target": name, "changed": True, "pinned": True}
            with open_target(name, config) as target:
                assert read_pins(target, Log())[f"redis/{pin_id}"]["reason"] == "audit 2026-Q4"

        repo.delete(local)  # the local copy (and its pin sidecar) lost: pins.json alone holds it offsite
        kept = offsite_retention(config, repo, now)
        for name in TARGETS:
            # 6 and 7 days old are outside the 5-day window; the pinned 7-day one stays
            assert kept[name]["obsolete"] == [b.backup_id for b in backups[1:3]], (name, kept[name])
            assert kept[name]["pinned"] == [pin_id] and pin_id in kept[name]["kept"]

        unpinned = run_dag(dag, pin_conf(pin_id, "unpin"))
        assert unpinned.state == "success", task_states(unpinned)
        assert task_states(unpinned)["pin_local"] == "skipped"  # no local copy left to unpin
        for name in TARGETS:
            assert task_result(unpinned, f"pin_{name}")["changed"] is True
        gone = offsite_retention(config, repo, now)
        for name in TARGETS:
            assert gone[name]["obsolete"] == [pin_id] and gone[name]["pinned"] == []
            with open_target(name, config) as target:
                assert pin_id not in {b.backup_id for b in target.catalog(Log()).all()}
                assert json.loads(target.read_file(PINS_REL, Log()))["pins"] == {}
    finally:
        remove_remote(remote)
        empty_prefix(s3.client(), bucket, prefix)
