"""Offsite retention decisions (pure): the local policy on the offsite catalog, the
missing-locally guard, the newest-arrived precondition, and a property over random catalogs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dbops.backup.repository import Backup, format_backup_id, format_time
from dbops.backup.retention import RetentionPolicy
from dbops.offsite.common import Envelope, OffsiteBackup, SeriesKey, plain_files
from dbops.offsite.retention import judged, plan_series

UTC = UTC
NOW = datetime(2024, 6, 15, 3, 0, tzinfo=UTC)
DAY = timedelta(days=1)
KEY = SeriesKey("redis")
POLICY = RetentionPolicy(30, 3)


def local(finished: datetime, *, ok: bool | None = None) -> Backup:
    backup_id = format_backup_id(finished - timedelta(minutes=10))
    manifest = {
        "manifest_sha256": f"m-{backup_id}",
        "files": [{"path": "dump.rdb", "bytes": 10, "sha256": "a" * 64}],
        "checks": [],
    }
    sidecars = {} if ok is None else {"drill": {"ok": ok, "at": format_time(finished + DAY)}}
    return Backup(
        path=Path("/b/redis") / backup_id,
        store="redis",
        backup_id=backup_id,
        finished_at=finished,
        manifest=manifest,
        sidecars=sidecars,
    )


def offsite(backup: Backup, *, envelope: bool = True) -> OffsiteBackup:
    env = None
    if envelope:
        env = Envelope(
            backup.manifest["manifest_sha256"],
            tuple(plain_files(backup.manifest)),
            None,
            "test",
            backup.finished_at + timedelta(minutes=30),
        )
    return OffsiteBackup(KEY, backup, env, "" if envelope else "offsite.json is missing")


def daily(count: int, *, last: datetime = NOW - timedelta(hours=1)) -> list[Backup]:
    return [local(last - i * DAY) for i in reversed(range(count))]


def deleted(decisions) -> list[str]:
    return [d.backup_id for d in decisions if not d.keep]


def test_forty_days_offsite_keeps_thirty():
    backups = daily(40)
    decisions, refused = plan_series(KEY, map(offsite, backups), backups, POLICY, NOW)
    assert refused is None
    assert deleted(decisions) == [b.backup_id for b in backups[:10]]
    assert all(d.reason.startswith("younger than 30 days") for d in decisions if d.keep)


def test_local_deletions_are_not_mirrored_offsite():
    backups = daily(40)
    # local retention kept only 7 days, and a young one was deleted by hand
    still_local = [b for b in backups[-7:] if b is not backups[-2]]
    decisions, refused = plan_series(KEY, map(offsite, backups), still_local, POLICY, NOW)
    assert refused is None
    assert deleted(decisions) == [b.backup_id for b in backups[:10]]
    by_id = {d.backup_id: d for d in decisions}
    assert by_id[backups[-2].backup_id].keep and not by_id[backups[-2].backup_id].local
    assert (
        by_id[backups[0].backup_id].line().startswith("delete redis/")
        and "(missing locally)" in by_id[backups[0].backup_id].line()
    )


def test_nothing_is_deleted_until_the_newest_local_backup_arrived():
    backups = daily(40)
    newest = local(NOW)
    decisions, refused = plan_series(KEY, map(offsite, backups), [*backups, newest], POLICY, NOW)
    assert refused and newest.backup_id in refused
    assert deleted(decisions) == []
    assert all("retention refused" in d.reason for d in decisions[:10])


def test_nothing_is_deleted_when_no_verified_local_backup_exists():
    backups = daily(40)
    decisions, refused = plan_series(KEY, map(offsite, backups), [], POLICY, NOW)
    assert refused and "only ones" in refused and deleted(decisions) == []


def test_min_keep_holds_old_backups_when_nothing_newer_exists():
    backups = daily(6, last=NOW - 50 * DAY)
    decisions, refused = plan_series(KEY, map(offsite, backups), backups, POLICY, NOW)
    assert refused is None
    assert deleted(decisions) == [b.backup_id for b in backups[:3]]
    assert all("min_keep=3" in d.reason for d in decisions if d.keep)


def test_a_copy_known_bad_locally_or_without_envelope_does_not_count_as_verified():
    backups = daily(6, last=NOW - 50 * DAY)
    backups[-1] = local(backups[-1].finished_at, ok=False)  # the newest failed its drill
    items = [offsite(b) for b in backups]
    items[-2] = offsite(backups[-2], envelope=False)  # arrived without its envelope
    assert not judged(items[-1], backups[-1]).verified and not judged(items[-2], None).verified
    assert judged(items[-3], backups[-3]).verified
    # the newest verified local backup is backups[-2] (only a sidecar failure makes it bad),
    # whose offsite copy has no envelope: refused
    decisions, refused = plan_series(KEY, items, backups, POLICY, NOW)
    assert refused and deleted(decisions) == []
    items[-2] = offsite(backups[-2])
    decisions, refused = plan_series(KEY, items, backups, POLICY, NOW)
    # three verified copies are needed newer than what goes: backups[-2], [-3], [-4]
    assert refused is None and deleted(decisions) == [b.backup_id for b in backups[:2]]


@settings(max_examples=150, deadline=None)
@given(
    ages=st.lists(st.integers(min_value=0, max_value=90 * 24), min_size=1, max_size=25, unique=True),
    local_mask=st.lists(st.booleans(), min_size=25, max_size=25),
    bad_mask=st.lists(st.booleans(), min_size=25, max_size=25),
    days=st.integers(min_value=1, max_value=60),
    min_keep=st.integers(min_value=1, max_value=5),
)
def test_property_never_deletes_inside_the_window_nor_below_min_keep(ages, local_mask, bad_mask, days, min_keep):
    policy = RetentionPolicy(days, min_keep)
    backups = [local(NOW - timedelta(hours=h), ok=False if bad_mask[i] else None) for i, h in enumerate(ages)]
    locals_ = [b for i, b in enumerate(backups) if local_mask[i]]
    decisions, refused = plan_series(KEY, map(offsite, backups), locals_, policy, NOW)
    by_id = {b.backup_id: b for b in backups}
    gone = set(deleted(decisions))
    if refused:
        assert not gone
    for backup_id in gone:
        assert NOW - by_id[backup_id].finished_at >= policy.window
    # verified as the offsite side can know it: arrived intact, and not known bad locally
    local_ids = {b.backup_id for b in locals_}
    verified = sorted(
        (b for b in backups if judged(offsite(b), b if b.backup_id in local_ids else None).verified),
        key=lambda b: b.finished_at,
    )
    assert not gone & {b.backup_id for b in verified[-min_keep:]}
    for backup_id in gone:  # whatever goes has min_keep verified newer copies left offsite
        newer = [b for b in verified if b.finished_at > by_id[backup_id].finished_at and b.backup_id not in gone]
        assert len(newer) >= min_keep


# ----------------------------------------------------------------------------- pins and tiers offsite


def test_a_backup_pinned_locally_or_in_pins_json_is_never_deleted_offsite():
    backups = daily(60)
    pinned_locally = backups[2]
    backups[2] = Backup(
        path=pinned_locally.path,
        store="redis",
        backup_id=pinned_locally.backup_id,
        finished_at=pinned_locally.finished_at,
        manifest=pinned_locally.manifest,
        sidecars={"pin": {"ok": True, "pinned": True, "reason": "audit", "at": format_time(NOW)}},
    )
    gone_locally = backups[5]  # pinned only offsite, and no longer in the local repository
    still_local = [b for b in backups if b is not gone_locally]
    decisions, refused = plan_series(
        KEY,
        map(offsite, backups),
        still_local,
        POLICY,
        NOW,
        {gone_locally.backup_id: "legal hold (pinned in pins.json of the target)"},
    )
    assert refused is None
    by_id = {d.backup_id: d for d in decisions}
    assert by_id[backups[2].backup_id].keep and by_id[backups[2].backup_id].reason.startswith("pinned: audit")
    assert by_id[gone_locally.backup_id].keep and by_id[gone_locally.backup_id].reason.startswith("pinned: legal hold")
    assert len(deleted(decisions)) == 28
    # the local pin travels with judged() (what shipping plans with, too)
    assert judged(offsite(backups[2]), backups[2]).sidecars["pin"]["reason"] == "audit"


def test_offsite_tiers_keep_the_newest_of_each_week_and_month():
    backups = daily(120)
    decisions, _ = plan_series(KEY, map(offsite, backups), backups, RetentionPolicy(7, 3, 4, 3), NOW)
    tiered = [d for d in decisions if d.keep and d.reason.startswith(("weekly", "monthly"))]
    # NOW is Saturday 2024-06-15: weeks W21..W24 (W24's and W23's newest inside the 7 days),
    # months April..June (June's newest inside the window)
    assert [d.backup_id[:8] for d in tiered] == ["20240430", "20240526", "20240531", "20240602"]
    assert len(deleted(decisions)) == 120 - 7 - 4


def test_pitr_base_backups_get_no_tiers_offsite():
    from dbops.offsite.retention import series_policy

    tiered = RetentionPolicy(30, 3, 8, 12)
    assert series_policy(tiered, SeriesKey("postgres_pitr")) == RetentionPolicy(30, 3)
    assert series_policy(tiered, SeriesKey("postgres", "ai_platform")) is tiered
