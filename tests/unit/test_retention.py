"""Retention: the policy's decisions (examples and properties) and applying them safely.

Boundary rule under test: a backup is inside the window when ``now - finished_at`` is
strictly less than ``retention_days`` x 24 h; one exactly that old is outside.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbops.backup.repository import Backup, BackupRepository, format_backup_id, format_time
from dbops.backup.retention import Decision, RetentionPolicy, RetentionRefused, apply_retention

UTC = UTC
DAY = timedelta(days=1)
NOW = datetime(2024, 6, 15, 2, 30, tzinfo=UTC)
META = {"tool": "redis-cli", "tool_version": "7.0", "server_version": "7.0", "compression": "none"}


def mem_backup(
    finished: datetime,
    *,
    verified: bool | None = None,
    seq: int = 1,
    store: str = "redis",
    subject: str | None = None,
    taken: datetime | None = None,
) -> Backup:
    """A Backup in memory; ``verified`` None means no verify/drill result recorded yet."""
    taken = taken or finished - timedelta(minutes=10)
    backup_id = format_backup_id(taken, seq)
    sidecars = (
        {}
        if verified is None
        else {"verify": {"kind": "verify", "ok": verified, "at": format_time(finished + timedelta(minutes=1))}}
    )
    return Backup(
        path=Path("/backups") / store / backup_id,
        store=store,
        subject=subject,
        backup_id=backup_id,
        finished_at=finished,
        sidecars=sidecars,
    )


def daily(last: datetime, count: int, **kwargs) -> list[Backup]:
    """``count`` backups one day apart, the newest finishing at ``last``."""
    return [mem_backup(last - i * DAY, **kwargs) for i in reversed(range(count))]


def kept(decisions: list[Decision]) -> list[datetime]:
    return [d.backup.finished_at for d in decisions if d.keep]


# ----------------------------------------------------------------------------- the policy by example


def test_policy_arguments_are_checked():
    for bad in [(0, 3), (30, 0), (-1, 1), (30, -2), (True, 3), (30.5, 3), ("30", 3)]:
        with pytest.raises(ValueError):
            RetentionPolicy(*bad)
    with pytest.raises(ValueError, match="timezone-aware"):
        RetentionPolicy(30, 3).evaluate([], datetime(2024, 1, 1))
    assert RetentionPolicy(30, 3).evaluate([], NOW) == []


def test_forty_daily_backups_keep_exactly_the_last_thirty_days():
    last = datetime(2024, 6, 15, 2, 0, tzinfo=UTC)
    catalog = daily(last, 40)
    decisions = RetentionPolicy(30, 3).evaluate(catalog, NOW)  # now = 02:30 on the newest day
    assert kept(decisions) == [last - i * DAY for i in reversed(range(30))]
    obsolete = [d for d in decisions if not d.keep]
    assert len(obsolete) == 10
    assert obsolete[-1].backup.finished_at == last - 30 * DAY
    assert "older than 30 days" in obsolete[-1].reason and "30 newer verified backups exist" in obsolete[-1].reason
    assert "younger than 30 days" in decisions[-1].reason


def test_exactly_retention_days_old_is_outside_the_window():
    last = datetime(2024, 6, 15, 2, 0, tzinfo=UTC)
    catalog = daily(last, 40)
    at_two = RetentionPolicy(30, 3).evaluate(catalog, last)  # now exactly at 02:00
    by_time = {d.backup.finished_at: d.keep for d in at_two}
    assert by_time[last - 30 * DAY] is False  # exactly 30 x 24 h old
    assert by_time[last - 29 * DAY] is True
    assert sum(by_time.values()) == 30
    # one microsecond earlier it is still inside
    early = RetentionPolicy(30, 3).evaluate(catalog, last - timedelta(microseconds=1))
    assert {d.backup.finished_at: d.keep for d in early}[last - 30 * DAY] is True


def test_min_keep_when_every_backup_is_old():
    stopped = NOW - 60 * DAY  # backups stopped 60 days ago
    catalog = daily(stopped, 20)
    decisions = RetentionPolicy(30, 3).evaluate(catalog, NOW)
    assert kept(decisions) == [stopped - 2 * DAY, stopped - DAY, stopped]
    assert all("min_keep=3" in d.reason for d in decisions if d.keep)
    assert decisions[-4].reason == "older than 30 days (age 63d 0h) and 3 newer verified backups exist"
    assert decisions[0].reason == "older than 30 days (age 79d 0h) and 19 newer verified backups exist"


def test_failed_verification_is_not_counted_toward_min_keep():
    stopped = NOW - 60 * DAY
    catalog = daily(stopped, 10)
    # the two newest old ones failed their drill; the policy must keep three *verified* ones
    catalog[-1] = mem_backup(stopped, verified=False)
    catalog[-2] = mem_backup(stopped - DAY, verified=False)
    decisions = RetentionPolicy(30, 3).evaluate(catalog, NOW)
    verified_kept = [d.backup.finished_at for d in decisions if d.keep and d.backup.verified]
    assert verified_kept == [stopped - 4 * DAY, stopped - 3 * DAY, stopped - 2 * DAY]
    # the failed ones are newer than those three, so nothing older is trusted to replace
    # them yet: they stay, marked as such
    failed = [d for d in decisions if not d.backup.verified]
    assert all(d.keep and "not verified" in d.reason for d in failed)
    assert len([d for d in decisions if not d.keep]) == 5


def test_an_old_failed_backup_goes_once_enough_verified_ones_are_newer():
    stopped = NOW - 60 * DAY
    catalog = daily(stopped, 6)
    catalog[0] = mem_backup(stopped - 5 * DAY, verified=False)
    decisions = RetentionPolicy(30, 3).evaluate(catalog, NOW)
    oldest = decisions[0]
    assert not oldest.keep and "latest verification failed" in oldest.reason


def test_young_failed_backups_are_kept_but_do_not_protect_old_ones():
    catalog = daily(NOW - 40 * DAY, 5) + [mem_backup(NOW - i * DAY, verified=False) for i in (3, 2, 1)]
    decisions = RetentionPolicy(30, 2).evaluate(catalog, NOW)
    assert [d.keep for d in decisions] == [False, False, False, True, True, True, True, True]


def test_evaluate_refuses_mixed_series_and_duplicates():
    a = mem_backup(NOW - DAY)
    with pytest.raises(ValueError, match="one series"):
        RetentionPolicy(30, 3).evaluate([a, mem_backup(NOW, store="mongo")], NOW)
    with pytest.raises(ValueError, match="twice"):
        RetentionPolicy(30, 3).evaluate([a, a], NOW)
    with pytest.raises(TypeError):
        RetentionPolicy(30, 3).evaluate([a, Path("/backups/redis/20240101T000000Z")], NOW)  # type: ignore[list-item]


# ----------------------------------------------------------------------------- DST and month ends


def plain_24h_keep(catalog: list[Backup], now: datetime, days: int) -> list[bool]:
    """The expected answer in integer seconds since the epoch: no calendar involved."""
    return [now.timestamp() - b.finished_at.timestamp() < days * 86400 for b in catalog]


@pytest.mark.parametrize(
    "now",
    [
        datetime(2024, 3, 31, 2, 30, tzinfo=UTC),  # Europe springs forward at 01:00 UTC this day
        datetime(2024, 3, 31, 0, 30, tzinfo=UTC),
        datetime(2024, 10, 27, 2, 30, tzinfo=UTC),  # Europe falls back at 01:00 UTC this day
        datetime(2024, 11, 1, 2, 0, tzinfo=UTC),  # 31st -> 1st, exactly on a backup's age boundary
        datetime(2024, 3, 1, 2, 30, tzinfo=UTC),  # leap February
        datetime(2023, 3, 1, 1, 59, tzinfo=UTC),
        datetime(2025, 1, 1, 0, 0, tzinfo=UTC),  # year end
    ],
)
@pytest.mark.parametrize("days", [1, 7, 30, 31])
def test_age_is_plain_utc_hours_across_dst_and_month_ends(now: datetime, days: int):
    catalog = daily(now.replace(hour=2, minute=0) - DAY * (now.hour < 2), 70)
    expected = plain_24h_keep(catalog, now, days)
    policy = RetentionPolicy(days, 1)
    decisions = policy.evaluate(catalog, now)
    assert [d.keep for d in decisions] == expected
    # the same instant written in a local zone with DST changes nothing
    for zone in ("Europe/Berlin", "America/New_York", "Asia/Shanghai"):
        local = now.astimezone(ZoneInfo(zone))
        assert policy.evaluate(catalog, local) == decisions
    # nor do finish times recorded in a local zone
    local_catalog = [mem_backup(b.finished_at.astimezone(ZoneInfo("Europe/Berlin"))) for b in catalog]
    assert [d.keep for d in policy.evaluate(local_catalog, now)] == expected
    # nor both at once (same-zone aware arithmetic in Python is wall-clock, not elapsed time)
    assert [d.keep for d in policy.evaluate(local_catalog, now.astimezone(ZoneInfo("Europe/Berlin")))] == expected


def test_dst_end_in_berlin_counts_24h_days_not_calendar_days():
    berlin = ZoneInfo("Europe/Berlin")
    finished = datetime(2024, 10, 26, 12, 0, tzinfo=berlin)  # CEST, 10:00 UTC
    next_day_same_wall_time = datetime(2024, 10, 27, 12, 0, tzinfo=berlin)  # CET: 25 real hours later
    assert next_day_same_wall_time.astimezone(UTC) - finished.astimezone(UTC) == timedelta(hours=25)
    catalog = [mem_backup(finished), mem_backup(finished + 2 * DAY)]  # a newer verified one meets min_keep
    policy = RetentionPolicy(1, 1)

    def keeps_first(now: datetime) -> bool:
        return policy.evaluate(catalog, now)[0].keep

    start = finished.astimezone(UTC)
    assert keeps_first(start + timedelta(hours=23, minutes=59, seconds=59)) is True
    assert keeps_first(start + timedelta(hours=24)) is False
    assert keeps_first(datetime(2024, 10, 27, 10, 0, tzinfo=berlin)) is True  # 23 real hours
    assert keeps_first(next_day_same_wall_time) is False


# ----------------------------------------------------------------------------- properties

CATALOG_START = datetime(2023, 1, 1, tzinfo=UTC)


@st.composite
def catalogs(draw) -> tuple[list[Backup], datetime, int, int]:
    n = draw(st.integers(0, 25))
    # distinct start seconds (ids must be unique), finish 0..6 h later; some share a second
    starts = draw(st.lists(st.integers(0, 200 * 86400), min_size=n, max_size=n))
    backups = []
    seen: dict[int, int] = {}
    for start in starts:
        seq = seen[start] = seen.get(start, 0) + 1
        taken = CATALOG_START + timedelta(seconds=start)
        finished = taken + timedelta(seconds=draw(st.integers(0, 6 * 3600)))
        verified = draw(st.sampled_from([None, True, False]))
        backups.append(mem_backup(finished, verified=verified, seq=seq, taken=taken))
    now = CATALOG_START + timedelta(seconds=draw(st.integers(-86400, 260 * 86400)))
    return backups, now, draw(st.integers(1, 60)), draw(st.integers(1, 8))


@given(catalogs())
@settings(max_examples=300, deadline=None)
def test_property_window_is_always_kept(case):
    backups, now, days, min_keep = case
    for d in RetentionPolicy(days, min_keep).evaluate(backups, now):
        if now - d.backup.finished_at < timedelta(days=days):
            assert d.keep, d


@given(catalogs())
@settings(max_examples=300, deadline=None)
def test_property_min_keep_verified_backups_survive(case):
    backups, now, days, min_keep = case
    decisions = RetentionPolicy(days, min_keep).evaluate(backups, now)
    verified = [b for b in backups if b.verified]
    assert sum(1 for d in decisions if d.keep and d.backup.verified) >= min(min_keep, len(verified))


@given(catalogs())
@settings(max_examples=300, deadline=None)
def test_property_newest_verified_backup_is_kept(case):
    backups, now, days, min_keep = case
    verified = [b for b in backups if b.verified]
    if not verified:
        return
    newest = max(verified, key=lambda b: b.sort_key)
    [decision] = [d for d in RetentionPolicy(days, min_keep).evaluate(backups, now) if d.backup == newest]
    assert decision.keep


@given(catalogs(), st.randoms(use_true_random=False))
@settings(max_examples=300, deadline=None)
def test_property_deterministic_and_independent_of_input_order(case, rnd: random.Random):
    backups, now, days, min_keep = case
    policy = RetentionPolicy(days, min_keep)
    first = policy.evaluate(backups, now)
    shuffled = list(backups)
    rnd.shuffle(shuffled)
    assert policy.evaluate(shuffled, now) == first
    assert policy.evaluate(list(reversed(backups)), now) == first


@given(catalogs())
@settings(max_examples=300, deadline=None)
def test_property_every_backup_gets_exactly_one_decision(case):
    backups, now, days, min_keep = case
    decisions = RetentionPolicy(days, min_keep).evaluate(backups, now)
    assert len(decisions) == len(backups)
    assert sorted(d.backup.backup_id for d in decisions) == sorted(b.backup_id for b in backups)
    assert all(isinstance(d.keep, bool) and d.reason for d in decisions)


@given(catalogs())
@settings(max_examples=300, deadline=None)
def test_property_obsolete_means_old_with_enough_newer_verified(case):
    """The other direction: the policy really deletes what the rules call obsolete."""
    backups, now, days, min_keep = case
    for d in RetentionPolicy(days, min_keep).evaluate(backups, now):
        old = now - d.backup.finished_at >= timedelta(days=days)
        newer_verified = sum(1 for b in backups if b.verified and b.sort_key > d.backup.sort_key)
        assert d.keep == (not old or newer_verified < min_keep), d


# ----------------------------------------------------------------------------- applying it to a repository


def write_backup(repo: BackupRepository, now: datetime, *, run_id: str | None = None) -> Backup:
    with repo.begin(
        "redis", run_id=run_id or f"run-{now:%Y%m%d}", dag_id="dbops_nightly_backup", logical_date=now, now=now
    ) as staging:
        (staging.path / "dump.rdb").write_bytes(f"dump of {now}".encode())
        return staging.seal(META, now=now + timedelta(minutes=5))


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[BackupRepository, list[Backup]]:
    """Ten backups, one a day, the newest this morning; 'now' is NOW."""
    repo = BackupRepository(tmp_path / "backups")
    backups = [write_backup(repo, NOW - timedelta(minutes=30) - i * DAY) for i in reversed(range(10))]
    return repo, backups


def ids(repo: BackupRepository) -> list[str]:
    return [b.backup_id for b in repo.list("redis")]


def test_apply_retention_deletes_the_obsolete(seeded):
    repo, backups = seeded
    logged: list[str] = []
    decisions = apply_retention(
        repo,
        "redis",
        None,
        RetentionPolicy(3, 2),
        now=NOW,
        new_backup_id=backups[-1].backup_id,
        dry_run=False,
        log=logged.append,
    )
    assert [d.keep for d in decisions] == [False] * 7 + [True] * 3
    assert ids(repo) == [b.backup_id for b in backups[-3:]]
    assert len(logged) == 7 and all(line.startswith("deleted redis ") for line in logged)
    assert all(not b.path.exists() for b in backups[:7])


def test_dry_run_deletes_nothing(seeded):
    repo, backups = seeded
    before = ids(repo)
    logged: list[str] = []
    decisions = apply_retention(
        repo,
        "redis",
        None,
        RetentionPolicy(3, 2),
        now=NOW,
        new_backup_id=backups[-1].backup_id,
        dry_run=True,
        log=logged.append,
    )
    assert sum(not d.keep for d in decisions) == 7
    assert ids(repo) == before and all(b.path.exists() for b in backups)
    assert len(logged) == 7 and all(line.startswith("dry run: would delete") for line in logged)


@pytest.mark.parametrize(
    "why", ["none", "unknown", "other-series", "failed-verification", "half-written", "old-backup"]
)
def test_apply_retention_refuses_without_a_good_new_backup(seeded, why: str):
    repo, backups = seeded
    new_id: str | None = backups[-1].backup_id
    if why == "none":
        new_id = None
    elif why == "unknown":
        new_id = format_backup_id(NOW)  # the run's backup never got sealed
    elif why == "other-series":
        new_id = write_backup_mongo(repo).backup_id
    elif why == "failed-verification":
        repo.record(backups[-1], "verify", {"ok": False, "detail": "sha256 mismatch"}, now=NOW)
    elif why == "half-written":
        staging = repo.begin("redis", run_id="r", dag_id="d", logical_date=None, now=NOW)
        (staging.path / "dump.rdb").write_bytes(b"partial")
        new_id = staging.backup_id
    elif why == "old-backup":  # a stale id from an old run, not this run's fresh backup
        new_id = backups[0].backup_id
    before = ids(repo)
    with pytest.raises(RetentionRefused, match="nothing deleted"):
        apply_retention(repo, "redis", None, RetentionPolicy(3, 2), now=NOW, new_backup_id=new_id, dry_run=False)
    assert ids(repo) == before and all(b.path.exists() for b in backups)


def write_backup_mongo(repo: BackupRepository) -> Backup:
    with repo.begin("mongo", run_id="m", dag_id="d", logical_date=None, now=NOW) as staging:
        (staging.path / "dump.archive").write_bytes(b"mongo")
        return staging.seal({**META, "tool": "mongodump"}, now=NOW)


def test_apply_retention_never_touches_what_is_not_a_backup(seeded):
    repo, backups = seeded
    stray = repo.root / "redis" / "20200101T000000Z"  # looks ancient, but has no manifest
    stray.mkdir()
    (stray / "dump.rdb").write_bytes(b"hand copied")
    staging = repo.begin("redis", run_id="r", dag_id="d", logical_date=None, now=NOW - 90 * DAY)
    (staging.path / "dump.rdb").write_bytes(b"in progress")
    apply_retention(
        repo, "redis", None, RetentionPolicy(1, 1), now=NOW, new_backup_id=backups[-1].backup_id, dry_run=False
    )
    assert ids(repo) == [backups[-1].backup_id]
    assert (stray / "dump.rdb").exists() and (staging.path / "dump.rdb").exists()


def test_rerun_of_apply_retention_converges(seeded):
    repo, backups = seeded
    args = dict(now=NOW, new_backup_id=backups[-1].backup_id, dry_run=False)
    apply_retention(repo, "redis", None, RetentionPolicy(5, 2), **args)
    after_first = ids(repo)
    decisions = apply_retention(repo, "redis", None, RetentionPolicy(5, 2), **args)
    assert ids(repo) == after_first and all(d.keep for d in decisions)


def test_a_store_that_cannot_expire_a_backup_keeps_its_record(seeded):
    """What a backup keeps outside the repository (a Weaviate backup on its server) is removed
    before its folder; when the store cannot remove it, the folder stays and the log says why."""
    from dbops.backup.adapter import ExpiryRefused

    repo, backups = seeded
    lines: list[str] = []
    removed: list[str] = []

    def before_delete(backup: Backup) -> None:
        if backup.backup_id == backups[0].backup_id:
            raise ExpiryRefused("the filesystem backend is out of reach")
        removed.append(backup.backup_id)

    apply_retention(
        repo,
        "redis",
        None,
        RetentionPolicy(3, 2),
        now=NOW,
        new_backup_id=backups[-1].backup_id,
        dry_run=False,
        log=lines.append,
        before_delete=before_delete,
    )
    left = [b.backup_id for b in repo.list("redis")]
    assert backups[0].backup_id in left and removed and not set(removed) & set(left)
    assert any("kept" in line and "out of reach" in line for line in lines)
