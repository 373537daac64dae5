"""The DB Ops page's overview, built from a real BackupRepository in a temp folder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial

import pytest

from dbops.backup.retention import RetentionPolicy
from dbops.status import overview
from tests import support

UTC = UTC
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
META = {"tool": "redis-cli", "tool_version": "7.0.15", "server_version": "7.0.15", "compression": "none"}


# a backup begun at ``now=`` and sealed a minute later, whose data is ``files``
make_backup = partial(
    support.make_backup, took=timedelta(minutes=1), meta=META, checks=[{"name": "tool-check", "ok": True, "detail": ""}]
)


def test_last_good_backup_drill_and_retention_verdict(repo):
    policy = RetentionPolicy(retention_days=30, min_keep=2)
    old = [make_backup(repo, now=NOW - timedelta(days=d), files={"dump.rdb": b"x" * (100 + d)}) for d in (50, 40, 35)]
    recent = make_backup(repo, now=NOW - timedelta(days=2), files={"dump.rdb": b"y" * 500})
    newest = make_backup(repo, now=NOW - timedelta(hours=3), files={"dump.rdb": b"z" * 700})
    repo.record(old[2], "drill", {"ok": True, "target": "scratch", "differences": []}, now=NOW - timedelta(days=1))
    # the newest backup failed its drill: not verified, so the last good one is the older
    repo.record(
        newest,
        "drill",
        {"ok": False, "target": "scratch", "differences": ["key a differs"]},
        now=NOW - timedelta(hours=1),
    )

    result = overview.backups_overview(repo, ["redis", "mongo"], policy, NOW)

    redis, mongo = result["stores"]
    assert mongo == {"store": "mongo", "status": overview.NO_BACKUP_YET, "error": None, "series": []}
    (series,) = redis["series"]
    listed = repo.list("redis")
    assert [b["backup_id"] for b in series["backups"]] == [b.backup_id for b in reversed(listed)]
    assert [b["total_bytes"] for b in series["backups"]] == [700, 500, 135, 140, 150]
    assert [b["data_bytes"] for b in series["backups"]] == [700, 500, 135, 140, 150]
    # the manifest and the drill results beside the data are counted apart, as on disk
    on_disk = [sum(f.stat().st_size for f in b.path.iterdir()) for b in reversed(listed)]
    data = [700, 500, 135, 140, 150]
    assert [b["sidecar_bytes"] for b in series["backups"]] == [n - d for n, d in zip(on_disk, data, strict=True)]
    assert series["data_bytes"] == 700 + 500 + 135 + 140 + 150
    assert series["sidecar_bytes"] == sum(on_disk) - series["data_bytes"] > 0
    assert [b["verified"] for b in series["backups"]] == [False, True, True, True, True]
    assert series["count"] == 5 and series["verified_count"] == 4
    assert series["total_bytes"] == 700 + 500 + 135 + 140 + 150
    assert series["last_good"]["backup_id"] == recent.backup_id
    assert series["last_good"]["age_seconds"] == int((NOW - recent.finished_at).total_seconds())
    assert series["newest"]["backup_id"] == newest.backup_id
    # the latest drill (by its time) is the failed one, with its differences
    assert series["last_drill"]["backup_id"] == newest.backup_id
    assert series["last_drill"]["ok"] is False and series["last_drill"]["differences"] == ["key a differs"]
    # the policy's own verdict: the 35-day-old backup stays (only one verified backup is newer,
    # min_keep is 2), the two older ones would go
    expected = {d.backup.backup_id: d.keep for d in policy.evaluate(listed, NOW)}
    assert {b["backup_id"]: b["retention"]["keep"] for b in series["backups"]} == expected
    assert series["retention"]["would_delete"] == [old[1].backup_id, old[0].backup_id]
    assert series["retention"]["keep"] == 3
    # read-only: nothing was deleted by evaluating retention
    assert len(repo.list("redis")) == 5


def test_postgres_series_per_database_and_an_unreadable_store(repo, tmp_path):
    make_backup(repo, "postgres", "ai_platform", now=NOW - timedelta(days=1), files={"dump.rdb": b"p" * 10})
    make_backup(repo, "postgres", "_globals", now=NOW - timedelta(days=1), files={"dump.rdb": b"g" * 20})
    (repo.root / "kafka").write_text("not a folder")  # a store folder that is a file

    result = overview.backups_overview(repo, ["postgres", "kafka"], RetentionPolicy(30, 3), NOW)

    postgres, kafka = result["stores"]
    assert [s["series"] for s in postgres["series"]] == ["postgres/_globals", "postgres/ai_platform"]
    assert [s["total_bytes"] for s in postgres["series"]] == [20, 10]
    assert kafka["status"] == "error" and "kafka" in kafka["error"] and kafka["series"] == []


def test_offsite_copies_count_only_the_same_manifest(repo):
    backup = make_backup(repo, now=NOW - timedelta(days=1), files={"dump.rdb": b"r" * 10})
    local = overview.backups_overview(repo, ["redis"], RetentionPolicy(30, 3), NOW)
    key = f"redis/{backup.backup_id}"
    sha = backup.manifest["manifest_sha256"]

    result = overview.offsite_copies(
        local,
        {
            "rsync": {key: sha},
            "s3": {key: "0" * 64},  # same id, another backup: not a copy of this one
            "other": "ConnectionError: refused",
        },
    )

    assert result["copies"] == {key: ["rsync"]}
    assert result["targets"] == {
        "other": {"error": "ConnectionError: refused", "backups": None},
        "rsync": {"error": None, "backups": 1},
        "s3": {"error": None, "backups": 1},
    }


def test_maintenance_summary_counts_and_unfinished_actions():
    t = NOW - timedelta(hours=1)
    run = {"run_id": "scheduled__x", "started_at": t, "finished_at": None}
    rows = [
        {
            "kind": "vacuum",
            "target": "auth.users",
            "action": "vacuum",
            "before_bytes": 10,
            "after_bytes": 8,
            "duration_ms": 5,
            "finished_at": t,
            "detail": {"reason": "dead tuples"},
        },
        {"kind": "vacuum", "target": "auth.groups", "action": "skipped", "finished_at": t, "detail": {}},
        {
            "kind": "reindex",
            "target": "auth.users_pkey",
            "action": "reindex",
            "finished_at": None,
            "detail": {"error": "lock timeout"},
        },
    ]

    summary = overview.maintenance_summary(run, rows)

    assert summary["counts"] == {"vacuum": {"vacuum": 1, "skipped": 1}, "reindex": {"reindex": 1}}
    assert summary["actions"] == 3 and summary["unfinished"] == 1 and summary["finished_at"] is None
    assert [r["note"] for r in summary["rows"]] == ["dead tuples", "", "lock timeout"]
    assert overview.maintenance_summary(None, []) is None


def test_table_size_chart_takes_the_biggest_tables_with_their_points():
    day = timedelta(days=1)
    history = [
        {"captured_at": NOW - day * i, "schema_name": "auth", "table_name": name, "total_bytes": size - i * 10}
        for i in (2, 1, 0)
        for name, size in (("users", 1000), ("groups", 500), ("tiny", 5 + 30))
    ]
    growth = [
        {
            "schema_name": "auth",
            "table_name": "users",
            "captured_at": NOW,
            "total_bytes": 1000,
            "growth_1d": 10.0,
            "growth_7d": None,
            "growth_30d": None,
            "limit_bytes": 10**9,
            "days_to_limit": 99.0,
        },
        {
            "schema_name": "auth",
            "table_name": "groups",
            "captured_at": NOW,
            "total_bytes": 500,
            "growth_1d": 10.0,
            "growth_7d": None,
            "growth_30d": None,
            "limit_bytes": 10**9,
            "days_to_limit": None,
        },
        {
            "schema_name": "auth",
            "table_name": "tiny",
            "captured_at": NOW,
            "total_bytes": 35,
            "growth_1d": 10.0,
            "growth_7d": None,
            "growth_30d": None,
            "limit_bytes": 10**9,
            "days_to_limit": None,
        },
    ]

    chart = overview.table_size_chart(history, growth, top=2)

    assert [t["table"] for t in chart["tables"]] == ["auth.users", "auth.groups"]
    assert chart["tables"][0]["points"] == [
        ["2026-11-18T12:00:00Z", 980],
        ["2026-11-19T12:00:00Z", 990],
        ["2026-11-20T12:00:00Z", 1000],
    ]
    assert chart["tables"][0]["growth_1d"] == 10.0 and chart["tables"][0]["days_to_limit"] == 99.0
    assert len(chart["captures"]) == 3 and chart["latest_capture"] == "2026-11-20T12:00:00Z"
    assert overview.table_size_chart([], [], top=3) == {"captures": [], "latest_capture": None, "tables": []}
    with pytest.raises(ValueError, match="top"):
        overview.table_size_chart(history, growth, top=0)


def test_sizes_are_the_data_with_the_description_and_results_apart(repo):
    description = b'{"databases": {"0": {"keys": 2}}}'
    backup = make_backup(
        repo, now=NOW - timedelta(hours=2), files={"dump.rdb": b"d" * 3000, "source_description.json": description}
    )
    repo.record(backup, "drill", {"ok": True, "target": "scratch", "differences": []}, now=NOW - timedelta(hours=1))
    (series,) = overview.backups_overview(repo, ["redis"], RetentionPolicy(retention_days=30, min_keep=2), NOW)[
        "stores"
    ][0]["series"]
    (entry,) = series["backups"]
    folder = sum(f.stat().st_size for f in backup.path.iterdir())
    assert entry["data_bytes"] == 3000 and entry["total_bytes"] == 3000 + len(description)
    assert entry["sidecar_bytes"] == folder - 3000  # manifest, description, drill result
    assert series["last_good"]["data_bytes"] == 3000
