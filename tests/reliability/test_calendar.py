"""Clock and calendar: backups taken on Airflow's own cron schedule (CronTriggerTimetable) in a
local timezone across the DST changes of 2026, and daily in UTC across month ends and the leap
day 2028-02-29. Backup ids are UTC; retention counts plain 24-hour days, never wall-clock days."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pendulum
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbops.backup.repository import Backup, BackupRepository, format_backup_id, parse_backup_id
from dbops.backup.retention import RetentionPolicy, apply_retention

UTC = UTC
META = {"tool": "calendar-test", "tool_version": "1", "server_version": "1", "compression": "none"}
TAKES = timedelta(minutes=5)  # a backup finishes 5 minutes after its schedule fires


def fire_times(cron: str, zone: str, start: datetime, end: datetime) -> list[datetime]:
    """Every fire time of Airflow's CronTriggerTimetable in [start, end), in UTC."""
    from airflow.timetables.trigger import CronTriggerTimetable

    timetable = CronTriggerTimetable(cron, timezone=zone)
    times, current = [], pendulum.instance(start - timedelta(seconds=1))
    while True:
        current = timetable._get_next(current)
        if current >= end:
            return times
        times.append(datetime.fromtimestamp(current.timestamp(), UTC))


def expected_kept(finished: list[datetime], now: datetime, policy: RetentionPolicy) -> list[bool]:
    """The rule in plain words: younger than retention_days x 24 h, or one of the newest min_keep."""
    return [
        now - f < timedelta(hours=24 * policy.retention_days) or i >= len(finished) - policy.min_keep
        for i, f in enumerate(finished)
    ]


def simulate(repo: BackupRepository, fires: list[datetime], policy: RetentionPolicy) -> dict[str, list[str]]:
    """One sealed backup per fire time, retention after each; the ids left after each night."""
    left_after: dict[str, list[str]] = {}
    alive: list[tuple[str, datetime]] = []
    for fired in fires:
        with repo.begin(
            "redis",
            run_id=f"scheduled__{fired.isoformat()}",
            dag_id="dbops_nightly_backup",
            logical_date=fired,
            now=fired,
        ) as staging:
            (staging.path / "dump.rdb").write_bytes(b"REDIS0011" + fired.isoformat().encode())
            backup = staging.seal(META, now=fired + TAKES)
        assert backup.backup_id == fired.strftime("%Y%m%dT%H%M%SZ")  # the UTC fire time, never local
        alive.append((backup.backup_id, backup.finished_at))
        now = fired + TAKES
        keep = expected_kept([f for _, f in alive], now, policy)
        apply_retention(repo, "redis", None, policy, now=now, new_backup_id=backup.backup_id, dry_run=False)
        alive = [a for a, k in zip(alive, keep, strict=True) if k]
        listed = [b.backup_id for b in repo.list("redis")]
        assert listed == [a for a, _ in alive], fired
        left_after[backup.backup_id] = listed
    return left_after


@pytest.mark.parametrize(
    ("first", "last"), [("2026-03-18", "2026-04-10"), ("2026-10-13", "2026-11-05")], ids=["spring-forward", "fall-back"]
)
def test_a_berlin_schedule_across_the_dst_changes_of_2026(repo, first, last):
    start, end = (datetime.fromisoformat(d).replace(tzinfo=UTC) for d in (first, last))
    fires = fire_times("0 2 * * *", "Europe/Berlin", start, end)
    days = [f.astimezone(ZoneInfo("Europe/Berlin")).date() for f in fires]
    assert days == sorted(set(days)) and (days[-1] - days[0]).days == len(days) - 1  # one a day, none twice
    gaps = {
        f.date().isoformat(): (f - p) / timedelta(hours=1)
        for p, f in zip(fires, fires[1:], strict=False)
        if f - p != timedelta(days=1)
    }
    # spring: 02:00 does not exist on 03-29 (Airflow fires at 03:00 CEST = 01:00 UTC), the next
    # night (02:00 CEST = 00:00 UTC) is 23 h on; autumn: 25 h between the nights around 10-25
    assert gaps == ({"2026-03-30": 23.0} if first.startswith("2026-03") else {"2026-10-25": 25.0}), gaps

    left_after = simulate(repo, fires, RetentionPolicy(7, 2))
    counts = {
        backup_id[:8]: len(ids)
        for backup_id, ids in left_after.items()
        if backup_id >= f"{start + timedelta(days=7):%Y%m%d}"
    }
    # 7 x 24 h hold one night more while the 23 h night is inside the window; a 25 h night
    # changes nothing (the count follows real elapsed time, not dates)
    more = {night for night, count in counts.items() if count != 7}
    assert more == (
        {f"202603{d}" for d in range(30, 32)} | {f"2026040{d}" for d in range(1, 6)}
        if first.startswith("2026-03")
        else set()
    )
    assert all(counts[night] == 8 for night in more)


@pytest.mark.parametrize(("year", "jan31_kept_on_march_1st"), [(2027, True), (2028, False)])
def test_month_ends_and_the_leap_day(repo, year, jan31_kept_on_march_1st):
    fires = fire_times("0 2 * * *", "UTC", datetime(year, 1, 20, tzinfo=UTC), datetime(year, 3, 3, tzinfo=UTC))
    left_after = simulate(repo, fires, RetentionPolicy(30, 3))
    march_1st = left_after[f"{year}0301T020000Z"]
    # Jan 31 -> Mar 1 is 29 days in 2027 and 30 days in 2028 (Feb 29): only then is it outside
    assert (f"{year}0131T020000Z" in march_1st) is jan31_kept_on_march_1st
    assert march_1st[-1] == f"{year}0301T020000Z" and len(march_1st) == 30
    assert (f"{year}0229T020000Z" in march_1st) is (year == 2028)
    assert [b for b in march_1st if b.startswith(f"{year}02")][-1] == f"{year}02{28 if year == 2027 else 29}T020000Z"


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Kolkata", "America/Sao_Paulo"]


@given(
    zone=st.sampled_from(ZONES),
    start=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2028, 12, 1)),
    hour=st.integers(0, 23),
    minute=st.sampled_from([0, 15, 30, 45]),
    nights=st.integers(1, 80),
    retention_days=st.integers(1, 40),
    min_keep=st.integers(1, 5),
)
@settings(max_examples=150, deadline=None)
def test_property_any_zone_any_dates(zone, start, hour, minute, nights, retention_days, min_keep):
    """Whatever the schedule's zone and dates: ids are the UTC fire times, strictly increasing,
    and after each night exactly the backups younger than retention_days x 24 h (or the newest
    min_keep) remain."""
    begin = start.replace(tzinfo=UTC)
    fires = fire_times(f"{minute} {hour} * * *", zone, begin, begin + timedelta(days=nights))
    ids = [format_backup_id(f) for f in fires]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(parse_backup_id(i)[0] == f for i, f in zip(ids, fires, strict=True))
    policy = RetentionPolicy(retention_days, min_keep)
    catalog: list[Backup] = []
    for backup_id, fired in zip(ids, fires, strict=True):
        catalog.append(
            Backup(
                path=Path("/backups/redis") / backup_id,
                store="redis",
                subject=None,
                backup_id=backup_id,
                finished_at=fired + TAKES,
            )
        )
        now = fired + TAKES
        decisions = policy.evaluate(catalog, now.astimezone(ZoneInfo(zone)))  # a local "now" changes nothing
        assert [d.keep for d in decisions] == expected_kept([b.finished_at for b in catalog], now, policy)
        catalog = [d.backup for d in decisions if d.keep]
