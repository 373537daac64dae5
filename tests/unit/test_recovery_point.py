"""Recovery-point checks (:mod:`dbops.backup.recovery_point`): every check green, late and
failed, clocks that disagree, and nothing found never passing. Backups are in memory where
only their times matter, and written through a real repository where the disk is read."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbops.backup import recovery_point as rp
from dbops.backup.repository import Backup, BackupRepository, format_time
from dbops.config import ConfigError, DbopsConfig

UTC = UTC
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
LIMITS = rp.Limits()


def backup(
    store: str,
    finished: datetime,
    subject: str | None = None,
    *,
    drill: tuple | None = None,
    size: int = 1000,
    verified: bool = True,
) -> Backup:
    """A backup as listed; ``drill``: (ok, at) of its drill.json."""
    sidecars = {}
    if drill is not None:
        sidecars["drill"] = {
            "ok": drill[0],
            "at": format_time(drill[1]) if drill[1] else None,
            "differences": [] if drill[0] else ["orders: 10 rows, expected 12"],
        }
    if not verified:
        sidecars["verify"] = {"ok": False, "at": format_time(finished + timedelta(minutes=5))}
    return Backup(
        path=Path("/nowhere") / store / finished.strftime("%Y%m%dT%H%M%SZ"),
        store=store,
        subject=subject,
        backup_id=finished.strftime("%Y%m%dT%H%M%SZ"),
        finished_at=finished,
        total_bytes=size,
        sidecars=sidecars,
    )


def healthy_series(store: str, subject: str | None = None, *, newest_age_h: float = 10) -> list[Backup]:
    old = backup(store, NOW - timedelta(days=3), subject, drill=(True, NOW - timedelta(days=2)))
    return [old, backup(store, NOW - timedelta(hours=newest_age_h), subject)]


def nightly(age_h: float = 10, state: str = "success", failed=()) -> rp.NightlyRun:
    return rp.NightlyRun("scheduled__x", state, NOW - timedelta(hours=age_h), failed_tasks=tuple(failed))


def copies(store: str, age_h: float = 10, subject=None) -> list[rp.OffsiteCopy]:
    at = NOW - timedelta(hours=age_h)
    return [rp.OffsiteCopy(store, subject, at.strftime("%Y%m%dT%H%M%SZ"), at)]


def run(
    series: dict,
    *,
    stores=None,
    offsite=None,
    run_=None,
    pitr=None,
    wal_check=None,
    leftovers=(),
    free=10**12,
    **kwargs,
) -> dict:
    stores = stores or list(series)
    local = rp.LocalFacts(
        series=series, leftovers=list(leftovers), disk_free_bytes=free, base_backups=pitr, wal_check=wal_check
    )
    offsite = {"s3": [c for s in stores for c in copies(s)]} if offsite is None else offsite
    return rp.evaluate(
        local,
        stores=stores,
        now=NOW,
        limits=kwargs.pop("limits", LIMITS),
        offsite=offsite,
        nightly=nightly() if run_ is None else run_,
        drilled=kwargs.pop("drilled", ("redis",)),
        **kwargs,
    )


def status(result: dict, store: str) -> str:
    return next(s["status"] for s in result["stores"] if s["store"] == store)


def checks(result: dict, name: str) -> list[dict]:
    return [c for s in result["stores"] for c in s["checks"] if c["check"] == name] + [
        c for c in result["common"] if c["check"] == name
    ]


def test_everything_fresh_is_green():
    result = run({"redis": {None: healthy_series("redis")}})
    assert result["status"] == "green", result["problems"]
    assert status(result, "redis") == "green" and result["problems"] == []
    (age,) = checks(result, rp.BACKUP_AGE)
    assert age["age_s"] == 10 * 3600 and age["limit_s"] == 26 * 3600 and age["series"] == "redis"


@pytest.mark.parametrize("age_h, expected", [(24.0, "green"), (25.0, "late"), (27.0, "failed")])
def test_the_newest_verified_backup_age(age_h, expected):
    result = run({"redis": {None: healthy_series("redis", newest_age_h=age_h)}}, offsite={"s3": copies("redis", 1)})
    assert status(result, "redis") == expected
    (age,) = checks(result, rp.BACKUP_AGE)
    assert age["status"] == expected
    if expected == "failed":
        assert "over recovery_point.max_backup_age_hours = 26.0 h" in age["reason"]
        assert rp.failures(result) == [f"redis: {age['reason']}"]


def test_an_unverified_newest_backup_does_not_count_and_is_a_warning():
    series = healthy_series("redis", newest_age_h=30) + [backup("redis", NOW - timedelta(hours=2), verified=False)]
    result = run({"redis": {None: series}})
    (age,) = checks(result, rp.BACKUP_AGE)
    assert age["status"] == "failed" and age["age_s"] == 30 * 3600  # the verified one is the recovery point
    assert checks(result, rp.UNVERIFIED)[0]["status"] == "late"


def test_every_database_of_postgres_is_its_own_series():
    result = run(
        {
            "postgres": {
                "app": healthy_series("postgres", "app"),
                "billing": healthy_series("postgres", "billing", newest_age_h=40),
            }
        },
        offsite={"s3": copies("postgres", 1, "app") + copies("postgres", 1, "billing")},
        drilled=(),
    )
    by_series = {c["series"]: c["status"] for c in checks(result, rp.BACKUP_AGE)}
    assert by_series == {"postgres/app": "green", "postgres/billing": "failed"}
    assert status(result, "postgres") == "failed"
    ignored = run(
        {
            "postgres": {
                "app": healthy_series("postgres", "app"),
                "billing": healthy_series("postgres", "billing", newest_age_h=40),
            }
        },
        offsite={"s3": copies("postgres", 1, "app")},
        drilled=(),
        ignore_series=["postgres/billing"],
    )
    assert status(ignored, "postgres") == "green", ignored["problems"]


def test_nothing_found_is_not_a_pass():
    assert status(run({"redis": {}}), "redis") == "failed"
    result = run({}, stores=["redis"])
    assert result["status"] == "failed" and "no backup of redis" in result["problems"][0]["reason"]
    none = run({}, stores=["weaviate"], off={"weaviate": "not backed up: no Airflow connection 'dbops_weaviate'"})
    assert status(none, "weaviate") == "off"
    assert none["status"] == "failed" and checks(none, rp.NO_STORES)[0]["status"] == "failed"
    unreadable = run({"redis": "PermissionError: [Errno 13] Permission denied"}, stores=["redis"])
    assert status(unreadable, "redis") == "failed" and "Permission denied" in unreadable["problems"][0]["reason"]


def test_a_backup_from_the_future_is_a_clock_problem_not_green():
    series = [
        backup("redis", NOW - timedelta(days=3), drill=(True, NOW - timedelta(days=2))),
        backup("redis", NOW + timedelta(hours=3)),
    ]
    result = run({"redis": {None: series}})
    assert status(result, "redis") == "failed"
    clock = checks(result, rp.BACKUP_CLOCK)[0]
    assert (
        clock["status"] == "failed"
        and "clock problem" in clock["reason"]
        and "max_clock_skew_minutes" in clock["reason"]
    )
    # within the allowed skew, a few minutes ahead is still fine
    near = [series[0], backup("redis", NOW + timedelta(minutes=5))]
    assert status(run({"redis": {None: near}}), "redis") == "green"


@pytest.mark.parametrize("age_h, expected", [(20, "green"), (48, "late"), (60, "failed")])
def test_the_newest_offsite_copy_per_target(age_h, expected):
    result = run(
        {"redis": {None: healthy_series("redis")}}, offsite={"s3": copies("redis", age_h), "rsync": copies("redis", 1)}
    )
    by_target = {c["target"]: c["status"] for c in checks(result, rp.OFFSITE_AGE)}
    assert by_target == {"s3": expected, "rsync": "green"}
    assert status(result, "redis") == expected


def test_offsite_missing_unreadable_or_from_the_future():
    result = run(
        {"redis": {None: healthy_series("redis")}},
        offsite={"s3": [], "rsync": "no Airflow connection 'dbops_offsite_ssh'"},
    )
    reasons = {c["target"]: (c["status"], c["reason"]) for c in checks(result, rp.OFFSITE_AGE)}
    assert reasons["s3"] == ("failed", "no copy of redis on offsite target s3")
    assert reasons["rsync"][0] == "failed" and "dbops_offsite_ssh" in reasons["rsync"][1]
    # a series younger than the limit has not been shipped yet: late, not failed
    young = [backup("redis", NOW - timedelta(hours=5), drill=(True, NOW - timedelta(hours=4)))]
    assert checks(run({"redis": {None: young}}, offsite={"s3": []}), rp.OFFSITE_AGE)[0]["status"] == "late"
    future = run({"redis": {None: healthy_series("redis")}}, offsite={"s3": copies("redis", -5)})
    assert "clock problem" in checks(future, rp.OFFSITE_AGE)[0]["reason"]


@pytest.mark.parametrize("drill_age_d, expected", [(2, "green"), (7.8, "late"), (9, "failed")])
def test_the_last_passed_drill(drill_age_d, expected):
    series = [
        backup("redis", NOW - timedelta(days=10), drill=(True, NOW - timedelta(days=drill_age_d))),
        backup("redis", NOW - timedelta(hours=3)),
    ]
    result = run({"redis": {None: series}})
    (drill,) = checks(result, rp.DRILL_AGE)
    assert drill["status"] == expected


def test_a_failed_or_missing_drill_fails():
    failed_last = [
        backup("redis", NOW - timedelta(days=3), drill=(True, NOW - timedelta(days=3))),
        backup("redis", NOW - timedelta(days=1), drill=(False, NOW - timedelta(hours=20))),
    ]
    (drill,) = checks(run({"redis": {None: failed_last}}), rp.DRILL_AGE)
    assert drill["status"] == "failed" and "failed" in drill["reason"] and "orders" in drill["reason"]
    never = [backup("redis", NOW - timedelta(days=20)), backup("redis", NOW - timedelta(hours=3))]
    (drill,) = checks(run({"redis": {None: never}}), rp.DRILL_AGE)
    assert drill["status"] == "failed" and drill["reason"] == "no passed drill of redis"
    unreadable = [backup("redis", NOW - timedelta(hours=3), drill=(True, None))]
    assert any(c["status"] == "failed" for c in checks(run({"redis": {None: unreadable}}), rp.DRILL_AGE))
    # a store without scratch targets (Weaviate) has no drill check
    assert checks(run({"weaviate": {None: never}}, drilled=("redis",)), rp.DRILL_AGE) == []


def dr_run(age_d: float, *, ok: bool = True, targets=("s3",), stores=("redis",), run_id="manual__dr") -> dict:
    """One run as dbops_dr_drill records it in dr_drill.json."""
    failures = [] if ok else ["s3: redis/20261101T020000Z: keys differ: 3 keys, expected 4"]
    return {
        "run_id": run_id,
        "at": format_time(NOW - timedelta(days=age_d)),
        "ok": ok,
        "targets": list(targets),
        "stores": list(stores),
        "failures": failures,
        "rto": [{"target": t, "series": s, "ok": ok, "rto_s": 12.5} for t in targets for s in stores],
    }


@pytest.mark.parametrize("age_d, expected", [(10, "green"), (34, "late"), (40, "failed")])
def test_the_last_passed_dr_drill_per_store_and_target(age_d, expected):
    series = {
        "redis": {
            None: [
                backup("redis", NOW - timedelta(days=60), drill=(True, NOW - timedelta(days=1))),
                backup("redis", NOW - timedelta(hours=3)),
            ]
        }
    }
    (dr,) = checks(run(series, dr_drills=[dr_run(age_d)]), rp.DR_DRILL_AGE)
    assert (dr["status"], dr["target"]) == (expected, "s3")


def test_a_failed_missing_or_unreadable_dr_drill_fails(tmp_path):
    series = {
        "redis": {
            None: [
                backup("redis", NOW - timedelta(days=60), drill=(True, NOW - timedelta(days=1))),
                backup("redis", NOW - timedelta(hours=3)),
            ]
        }
    }
    # the newest run failed for redis: failed, naming the difference, though an older one passed
    (dr,) = checks(run(series, dr_drills=[dr_run(2, ok=False), dr_run(20)]), rp.DR_DRILL_AGE)
    assert dr["status"] == "failed" and "keys differ" in dr["reason"]
    # a run of another store or target does not count for redis on s3
    (dr,) = checks(
        run(series, dr_drills=[dr_run(2, stores=("kafka",)), dr_run(3, targets=("rsync",))]), rp.DR_DRILL_AGE
    )
    assert dr["status"] == "failed" and "no passed DR drill of redis from offsite target s3" in dr["reason"]
    # never run, but the store is younger than the limit: still to come
    young = {"redis": {None: [backup("redis", NOW - timedelta(days=5), drill=(True, NOW - timedelta(days=1)))]}}
    assert checks(run(young, dr_drills=[]), rp.DR_DRILL_AGE)[0]["status"] == "late"
    # no offsite target: no DR drill expected, no check
    assert checks(run(series, offsite={}, dr_drills=None), rp.DR_DRILL_AGE) == []
    # the result file: missing is "never ran", garbage is an error the check fails on
    assert rp.read_dr_drills(tmp_path) == []
    (tmp_path / rp.DR_DRILL_FILE).write_text("{not json")
    unreadable = rp.read_dr_drills(tmp_path)
    assert isinstance(unreadable, str)
    assert checks(run(series, dr_drills=unreadable), rp.DR_DRILL_AGE)[0]["status"] == "failed"


def test_the_nightly_run():
    series = {"redis": {None: healthy_series("redis")}, "mongo": {None: healthy_series("mongo")}}
    offsite = {"s3": copies("redis") + copies("mongo")}
    assert checks(run(series, offsite=offsite, drilled=()), rp.NIGHTLY_RUN)[0]["status"] == "green"
    failed = run(series, offsite=offsite, drilled=(), run_=nightly(state="failed", failed=["backup_redis"]))
    assert status(failed, "redis") == "failed" and status(failed, "mongo") == "green"
    assert "backup_redis" in checks(failed, rp.NIGHTLY_RUN)[0]["reason"]
    planless = run(series, offsite=offsite, drilled=(), run_=nightly(state="failed", failed=["plan"]))
    assert status(planless, "redis") == status(planless, "mongo") == "failed"
    missing = run(series, offsite=offsite, drilled=(), run_=nightly(age_h=30))
    assert (
        status(missing, "mongo") == "failed" and "max_nightly_gap_hours" in checks(missing, rp.NIGHTLY_RUN)[0]["reason"]
    )
    local = rp.LocalFacts(series=series, disk_free_bytes=10**12)
    never = rp.evaluate(local, stores=["redis", "mongo"], now=NOW, offsite=offsite, nightly=None)
    assert checks(never, rp.NIGHTLY_RUN)[0]["status"] == "failed"
    unreadable = rp.evaluate(local, stores=["redis"], now=NOW, offsite=offsite, nightly_error="HTTP 500")
    assert "HTTP 500" in checks(unreadable, rp.NIGHTLY_RUN)[0]["reason"]


def test_staging_leftovers_are_late():
    old = rp.Leftover("redis", Path("/r/redis/.staging/x.1"), NOW - timedelta(hours=13))
    young = rp.Leftover("redis", Path("/r/redis/.staging/y.2"), NOW - timedelta(hours=1))
    result = run({"redis": {None: healthy_series("redis")}}, leftovers=[old, young])
    (found,) = checks(result, rp.STAGING)
    assert found["status"] == "late" and "x.1" in found["reason"] and "y.2" not in found["reason"]
    assert status(result, "redis") == "late" and rp.failures(result) == []


@pytest.mark.parametrize("free, expected", [(10**9, "green"), (2000, "late"), (1000, "failed")])
def test_disk_free_against_the_next_backup(free, expected):
    result = run({"redis": {None: healthy_series("redis")}}, free=free)  # newest 1000 B, +25 %: 1250 B
    (disk,) = checks(result, rp.DISK)
    assert disk["status"] == expected and result["disk"] == {"free_bytes": free, "expected_bytes": 1250}
    assert status(result, "redis") == expected


def pitr_facts(base_age_h=5, drill_age_d=2, check_age_min=10, ok=True):
    bases = [
        backup("postgres_pitr", NOW - timedelta(hours=base_age_h), drill=(True, NOW - timedelta(days=drill_age_d)))
    ]
    wal = {
        "at": format_time(NOW - timedelta(minutes=check_age_min)),
        "ok": ok,
        "problems": [] if ok else ["receiver heartbeat is 300 s old"],
    }
    return bases, wal


@pytest.mark.parametrize(
    "kwargs, check, expected",
    [
        ({}, None, "green"),
        ({"base_age_h": 30}, rp.PITR_BASE_AGE, "failed"),
        ({"drill_age_d": 9}, rp.PITR_DRILL_AGE, "failed"),
        ({"ok": False}, rp.WAL_CHECK, "failed"),
        ({"check_age_min": 60}, rp.WAL_CHECK, "late"),
    ],
)
def test_point_in_time_recovery_counts_for_postgres(kwargs, check, expected):
    bases, wal = pitr_facts(**kwargs)
    series = {"postgres": {"app": healthy_series("postgres", "app")}}
    result = run(series, offsite={"s3": copies("postgres", 1, "app")}, pitr=bases, wal_check=wal, drilled=("postgres",))
    assert status(result, "postgres") == expected, result["problems"]
    if check:
        assert any(c["status"] == expected for c in checks(result, check))


def test_point_in_time_recovery_without_base_backup_or_wal_check_fails():
    series = {"postgres": {"app": healthy_series("postgres", "app")}}
    result = run(series, offsite={"s3": copies("postgres", 1, "app")}, pitr=[], wal_check=None, drilled=())
    assert {c["check"] for c in result["problems"]} == {rp.PITR_BASE_AGE, rp.WAL_CHECK}
    assert all(c["status"] == "failed" for c in result["problems"])


def test_limits_refuse_nonsense_and_the_config_section_is_checked():
    with pytest.raises(ValueError, match="late_fraction"):
        rp.Limits(late_fraction=0)
    limits = rp.Limits.from_config(DbopsConfig().with_overrides({"recovery_point": {"max_backup_age_hours": 30}}))
    assert limits.max_backup_age_hours == 30 and limits.max_drill_age_days == 8
    assert DbopsConfig().schedules.recovery_check == "*/30 * * * *"
    with pytest.raises(ConfigError, match="recovery_point.max_backup_age_hours"):
        DbopsConfig().with_overrides({"recovery_point": {"max_backup_age_hours": 0}})
    with pytest.raises(ConfigError, match="recovery_point.ignore_series"):
        DbopsConfig().with_overrides({"recovery_point": {"ignore_series": ["../etc"]}})


def test_metrics_are_prometheus_text():
    result = run({"redis": {None: healthy_series("redis", newest_age_h=30)}})
    text = rp.render_metrics(result)
    assert 'dbops_recovery_point_status{store="redis"} 2' in text
    assert 'dbops_recovery_point_age_seconds{check="backup_age",store="redis",series="redis",target=""} 108000' in text
    assert (
        'dbops_recovery_point_age_limit_seconds{check="backup_age",store="redis",series="redis",target=""} 93600'
        in text
    )
    assert "# TYPE dbops_recovery_point_failed_checks gauge\ndbops_recovery_point_failed_checks 1\n" in text
    assert text.endswith("\n") and all(
        line.startswith("#") or line.split(" ")[-1].lstrip("-").replace(".", "", 1).isdigit()
        for line in text.splitlines()
    )


def test_collect_local_reads_a_real_repository(tmp_path):
    repo = BackupRepository(tmp_path / "backups")
    taken = datetime.now(UTC) - timedelta(hours=2)
    with repo.begin("redis", None, run_id="r1", dag_id="dbops_nightly_backup", logical_date=taken, now=taken) as st:
        (st.path / "dump.rdb").write_bytes(b"x" * 500)
        made = st.seal(
            {"tool": "redis-cli", "tool_version": "7", "server_version": "7", "compression": "none"},
            [{"name": "redis-check-rdb", "ok": True, "detail": ""}],
            now=taken,
        )
    stale = repo.series_path("redis") / ".staging" / "20261201T000000Z.abc"
    stale.mkdir(parents=True)
    (stale / "part").write_bytes(b"y")
    old = (datetime.now(UTC) - timedelta(hours=20)).timestamp()
    for path in (stale / "part", stale):
        os.utime(path, (old, old))
    local = rp.collect_local(repo, ["redis", "mongo"], pitr_enabled=True)
    assert [b.backup_id for b in local.series["redis"][None]] == [made.backup_id]
    assert local.series["mongo"] == {}
    assert [x.path for x in local.leftovers] == [stale] and local.disk_free_bytes > 0
    assert local.base_backups == [] and local.wal_check is None
    result = rp.evaluate(local, stores=["redis", "mongo"], now=datetime.now(UTC), offsite={})
    assert status(result, "mongo") == "failed"
    assert any(c["check"] == rp.STAGING and c["status"] == "late" for c in result["problems"])


def test_every_sample_of_a_family_has_the_same_label_names():
    """node_exporter's textfile collector refuses a family whose samples mix label names."""
    import re

    series = {"postgres": {"app": healthy_series("postgres", "app")}, "redis": {None: healthy_series("redis")}}
    text = rp.render_metrics(run(series, offsite={"s3": copies("postgres", 1, "app") + copies("redis")}))
    names: dict[str, set] = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            family, _, labels = line.partition("{")
            names.setdefault(family.split(" ")[0], set()).add(tuple(re.findall(r'(\w+)="', labels)))
    assert names and all(len(found) == 1 for found in names.values()), names


def test_the_page_judges_a_failed_nightly_lookup_and_shows_a_stale_dag_result(tmp_path):
    from dbops.status import recovery_point as page

    repo = BackupRepository(tmp_path / "backups")
    repo.root.mkdir(parents=True, exist_ok=True)
    generated_at = format_time(NOW - timedelta(hours=3))
    (repo.root / rp.RESULT_FILE).write_text(json.dumps({"generated_at": generated_at, "status": "green"}))
    config = DbopsConfig().with_overrides(
        {"backup": {"root": str(repo.root), "stores": ["redis"]}, "pitr": {"enabled": False}}
    )

    def broken(_now):
        raise ConnectionError("metadata database unreachable")

    result = page.recovery_overview(config, repo, NOW, offsite={}, nightly=broken, connection_exists=lambda _c: True)
    assert result["dag"]["status"] == "green" and result["dag"]["stale"] is True
    (nightly_check,) = [c for c in result["common"] if c["check"] == rp.NIGHTLY_RUN]
    assert nightly_check["status"] == "failed" and "metadata database unreachable" in nightly_check["reason"]
    assert status(result, "redis") == "failed"


@settings(max_examples=60, deadline=None)
@given(age_s=st.integers(min_value=-600, max_value=60 * 3600), limit_min=st.integers(min_value=60, max_value=48 * 60))
def test_the_backup_age_verdict_follows_the_limit_exactly(age_s, limit_min):
    """Failed exactly over the limit, late exactly past late_fraction of it, green below
    (times in whole seconds: the repository's clock resolution is finer, the rule is the same)."""
    limits = rp.Limits(max_backup_age_hours=limit_min / 60)
    result = run({"redis": {None: healthy_series("redis", newest_age_h=age_s / 3600)}}, limits=limits)
    (age,) = checks(result, rp.BACKUP_AGE)
    limit_s = limit_min * 60
    expected = "failed" if age_s > limit_s else "late" if age_s > 0.95 * limit_s else "green"
    assert age["status"] == expected, (age_s, limit_min, age["reason"])
