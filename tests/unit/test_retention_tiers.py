"""Retention tiers (weekly, monthly) and pins: examples, a 400-day catalog checked against an
answer computed straight from the calendar, and properties (hypothesis).

Calendar rules under test (see dbops.backup.retention): ISO weeks (Monday) and calendar
months of ``finished_at`` in UTC; the tier covers the ``keep_weekly`` (``keep_monthly``)
most recent weeks (months), the one of ``now`` included; its member is the newest verified
backup of the week (month), else the newest. Pins are never expired and never count
toward ``min_keep``.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbops.backup.repository import Backup, BackupRepository, format_backup_id, format_time
from dbops.backup.retention import Decision, RetentionPolicy, apply_retention, pin_reason, pin_record, unpin_record

UTC = UTC
DAY = timedelta(days=1)
NOW = datetime(2026, 12, 6, 2, 30, tzinfo=UTC)  # a Sunday: the last day of 2026-W49
META = {"tool": "redis-cli", "tool_version": "7.0", "server_version": "7.0", "compression": "none"}


def mem_backup(finished: datetime, *, verified: bool | None = None, pin: str | None = None) -> Backup:
    taken = finished - timedelta(minutes=10)
    sidecars: dict = {}
    if verified is not None:
        sidecars["verify"] = {"kind": "verify", "ok": verified, "at": format_time(finished + timedelta(minutes=1))}
    if pin is not None:
        sidecars["pin"] = {"kind": "pin", "ok": True, "pinned": True, "reason": pin, "at": format_time(finished)}
    backup_id = format_backup_id(taken, 1)
    return Backup(
        path=Path("/backups/redis") / backup_id,
        store="redis",
        backup_id=backup_id,
        finished_at=finished,
        sidecars=sidecars,
    )


def by_id(decisions: Iterable[Decision]) -> dict[str, Decision]:
    return {d.backup.backup_id: d for d in decisions}


# ----------------------------------------------------------------------------- examples


def test_tier_arguments_are_checked():
    for bad in [(30, 3, -1, 0), (30, 3, 0, -1), (30, 3, 1.5, 0), (30, 3, True, 0), (30, 3, 0, "12")]:
        with pytest.raises(ValueError):
            RetentionPolicy(*bad)
    assert RetentionPolicy(30, 3).keep_weekly == 0 and RetentionPolicy(30, 3).keep_monthly == 0


def test_the_weekly_member_is_the_newest_verified_of_its_week_and_the_reason_names_it():
    # 2026-W40 is Monday 28 Sep .. Sunday 4 Oct; the Sunday backup failed its verify
    week = [mem_backup(datetime(2026, 9, 28 + i, 2, tzinfo=UTC)) for i in range(3)]
    week.append(mem_backup(datetime(2026, 10, 4, 2, tzinfo=UTC), verified=False))
    decisions = by_id(RetentionPolicy(7, 1, keep_weekly=12).evaluate(week + [mem_backup(NOW - DAY)], NOW))
    member = decisions[week[2].backup_id]
    assert member.keep and member.reason.startswith("weekly tier: newest verified of 2026-W40")
    assert not decisions[week[0].backup_id].keep
    assert f"weekly tier keeps {week[2].backup_id} of 2026-W40" in decisions[week[0].backup_id].reason
    # the failed one is newer than three verified ones only if min_keep says so: here it goes
    assert not decisions[week[3].backup_id].keep


def test_a_week_without_a_verified_backup_keeps_its_newest():
    week = [mem_backup(datetime(2026, 10, 5 + i, 2, tzinfo=UTC), verified=False) for i in range(2)]
    decisions = by_id(RetentionPolicy(7, 1, keep_weekly=12).evaluate(week + [mem_backup(NOW - DAY)], NOW))
    assert decisions[week[1].backup_id].keep
    assert decisions[week[1].backup_id].reason.startswith("weekly tier: newest of 2026-W41 (none of it verified)")
    assert not decisions[week[0].backup_id].keep


def test_weeks_and_months_count_back_from_the_current_one():
    # now: Sunday 6 Dec (2026-W49). keep_weekly 2: W49 and W48 only; 29 Nov (Sunday of W48) is a
    # member, 22 Nov (W47) is not. keep_monthly 2: December and November: 30 Nov is November's member
    catalog = [mem_backup(datetime(2026, 11, d, 2, tzinfo=UTC)) for d in (22, 29, 30)]
    catalog.append(mem_backup(datetime(2026, 10, 31, 2, tzinfo=UTC)))
    catalog.append(mem_backup(NOW - timedelta(hours=1)))
    decisions = by_id(RetentionPolicy(1, 1, keep_weekly=2, keep_monthly=2).evaluate(catalog, NOW))
    reasons = {bid[:8]: (d.keep, d.reason) for bid, d in decisions.items()}
    assert reasons["20261129"][0] and reasons["20261129"][1].startswith("weekly tier: newest of 2026-W48")
    assert reasons["20261130"][0] and reasons["20261130"][1].startswith("monthly tier: newest of 2026-11")
    assert not reasons["20261122"][0] and "2026-W47 is past the 2 weeks of the weekly tier" in reasons["20261122"][1]
    assert not reasons["20261031"][0] and "2026-10 is past the 2 months of the monthly tier" in reasons["20261031"][1]


def test_a_pin_is_kept_forever_and_does_not_count_toward_min_keep():
    old = [mem_backup(NOW - (100 + i) * DAY) for i in range(5)]
    pinned = mem_backup(NOW - 90 * DAY, pin="audit 2026-Q3")
    decisions = by_id(RetentionPolicy(30, 2).evaluate(old + [pinned], NOW))
    assert decisions[pinned.backup_id].keep
    assert decisions[pinned.backup_id].reason.startswith("pinned: audit 2026-Q3")
    # the pinned one is newest; min_keep 2 still keeps the two newest unpinned ones
    assert [d.keep for d in sorted(decisions.values(), key=lambda d: d.backup.sort_key)] == [False] * 3 + [True] * 3


def test_pins_given_by_the_caller_count_like_sidecars_and_an_unreadable_pin_holds():
    old = [mem_backup(NOW - (100 + i) * DAY) for i in range(4)]
    unreadable = Backup(
        path=Path("/x"),
        store="redis",
        backup_id=format_backup_id(NOW - 200 * DAY, 1),
        finished_at=NOW - 200 * DAY,
        sidecars={"pin": {"kind": "pin", "ok": False, "detail": "unreadable pin.json: bad"}},
    )
    assert "unreadable" in (pin_reason(unreadable) or "")
    decisions = by_id(RetentionPolicy(30, 1).evaluate(old + [unreadable], NOW, pins={old[3].backup_id: "legal hold"}))
    assert decisions[old[3].backup_id].keep and decisions[old[3].backup_id].reason.startswith("pinned: legal hold")
    held = decisions[unreadable.backup_id]
    assert held.keep and held.reason.startswith("pinned: pin.json unreadable")
    assert [decisions[b.backup_id].keep for b in old] == [True, False, False, True]  # newest kept by min_keep 1


def test_pin_records():
    assert pin_record("  audit  ", "manual__1") == {"ok": True, "pinned": True, "reason": "audit", "by": "manual__1"}
    with pytest.raises(ValueError, match="reason"):
        pin_record("   ", "manual__1")
    unpinned = mem_backup(NOW)
    unpinned = Backup(
        path=unpinned.path,
        store="redis",
        backup_id=unpinned.backup_id,
        finished_at=NOW,
        sidecars={"pin": {**unpin_record("r"), "kind": "pin", "at": format_time(NOW)}},
    )
    assert pin_reason(unpinned) is None


# ----------------------------------------------------------------------------- 400 days, from the calendar


def expected_from_calendar(
    days: dict[date, tuple[bool, str | None]],
    today: date,
    *,
    retention_days: int,
    min_keep: int,
    weeks: int,
    months: int,
) -> set[date]:
    """The kept days of a one-backup-a-day catalog (backup at 02:00 UTC, now 02:30 on
    ``today``), worked out with calendar arithmetic only."""

    def member(period: list[date]) -> date | None:
        present = [d for d in period if d in days]
        good = [d for d in present if days[d][0]]
        return max(good or present) if present else None

    kept = {d for d in days if (today - d).days < retention_days}  # age = whole days + 30 min
    kept |= {d for d, (_, pin) in days.items() if pin}
    monday = today - timedelta(days=today.weekday())
    for k in range(weeks):
        start = monday - timedelta(weeks=k)
        found = member([start + timedelta(days=i) for i in range(7)])
        if found:
            kept.add(found)
    year, month = today.year, today.month
    for _ in range(months):
        found = member([date(year, month, d) for d in range(1, calendar.monthrange(year, month)[1] + 1)])
        if found:
            kept.add(found)
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    newest_good = sorted((d for d, (ok, pin) in days.items() if ok and not pin), reverse=True)[:min_keep]
    return kept | set(newest_good)


def four_hundred_days() -> dict[date, tuple[bool, str | None]]:
    today = NOW.date()
    days = {}
    for age in range(400):
        day = today - timedelta(days=age)
        verified = not (day.day % 9 == 0 or day.weekday() == 6 and day.day > 20 or day.day == 31)
        days[day] = (verified, None)
    days[date(2026, 2, 11)] = (True, "before the schema migration")
    days[date(2025, 11, 20)] = (False, "legal hold")
    return days


def test_a_400_day_catalog_with_tiers_and_pins_keeps_exactly_what_the_calendar_says():
    days = four_hundred_days()
    catalog = [
        mem_backup(datetime(d.year, d.month, d.day, 2, tzinfo=UTC), verified=ok, pin=pin)
        for d, (ok, pin) in days.items()
    ]
    policy = RetentionPolicy(30, 3, keep_weekly=8, keep_monthly=12)
    decisions = policy.evaluate(catalog, NOW)
    kept = {d.backup.finished_at.date() for d in decisions if d.keep}
    expected = expected_from_calendar(days, NOW.date(), retention_days=30, min_keep=3, weeks=8, months=12)
    assert kept == expected
    # about 30 + 8 weeks + 12 months (overlapping) + 2 pins
    assert 45 <= len(kept) <= 50, len(kept)
    reasons = {d.backup.finished_at.date(): d.reason for d in decisions}
    assert reasons[date(2026, 2, 11)].startswith("pinned: before the schema migration")
    assert reasons[date(2025, 11, 20)].startswith("pinned: legal hold")
    assert reasons[date(2026, 11, 1)].startswith("weekly tier: newest of 2026-W44")
    assert reasons[date(2026, 10, 24)].startswith("weekly tier: newest verified of 2026-W43")  # the 25th failed
    assert "2026-W41 is past the 8 weeks of the weekly tier" in reasons[date(2026, 10, 11)]
    # 31 Oct failed its verify: October's member is the 30th, named "newest verified"
    assert reasons[date(2026, 10, 30)].startswith("monthly tier: newest verified of 2026-10")
    assert reasons[date(2026, 1, 30)].startswith("monthly tier: newest verified of 2026-01")
    assert "2025-12 is past the 12 months of the monthly tier" in reasons[date(2025, 12, 30)]


def test_a_400_day_repository_with_tiers_and_pins_expires_exactly_the_rest(tmp_path):
    """The same rules applied on disk: pins written as sidecars by the repository."""
    days = four_hundred_days()
    repo = BackupRepository(tmp_path / "backups")
    for day in sorted(days):
        finished = datetime(day.year, day.month, day.day, 2, tzinfo=UTC)
        taken = finished - timedelta(minutes=10)
        with repo.begin("redis", run_id=f"r{day}", dag_id="t", logical_date=None, now=taken) as staging:
            (staging.path / "dump.rdb").write_bytes(b"REDIS" + day.isoformat().encode())
            backup = staging.seal(META, now=finished)
        ok, pin = days[day]
        if not ok:
            repo.record(backup, "verify", {"ok": False, "detail": "test"}, now=finished + timedelta(minutes=1))
        if pin:
            repo.record(backup, "pin", pin_record(pin, "test"), now=finished + timedelta(minutes=2))
    newest = repo.list("redis")[-1]
    policy = RetentionPolicy(30, 3, keep_weekly=8, keep_monthly=12)
    apply_retention(repo, "redis", None, policy, now=NOW, new_backup_id=newest.backup_id, dry_run=False)
    left = {b.finished_at.date() for b in repo.list("redis")}
    assert left == expected_from_calendar(days, NOW.date(), retention_days=30, min_keep=3, weeks=8, months=12)
    # unpinned, the old pin goes on the next run
    legal = next(b for b in repo.list("redis") if b.finished_at.date() == date(2025, 11, 20))
    repo.record(legal, "pin", unpin_record("test"))
    apply_retention(repo, "redis", None, policy, now=NOW, new_backup_id=newest.backup_id, dry_run=False)
    assert date(2025, 11, 20) not in {b.finished_at.date() for b in repo.list("redis")}


# ----------------------------------------------------------------------------- properties


def old_evaluate(policy: RetentionPolicy, backups: list[Backup], now: datetime) -> list[tuple[str, bool, str]]:
    """The policy before tiers and pins, verbatim (the reference for keep_weekly = keep_monthly = 0)."""
    from dbops.backup.retention import _age_text, _plural

    ordered = sorted(backups, key=lambda b: b.sort_key)
    verified_newer = [0] * len(ordered)
    count = 0
    for i in range(len(ordered) - 1, -1, -1):
        verified_newer[i] = count
        if ordered[i].verified:
            count += 1
    days = _plural(policy.retention_days, "day")
    out = []
    for backup, newer in zip(ordered, verified_newer, strict=True):
        age = now - backup.finished_at
        state = "" if backup.verified else ", latest verification failed"
        if age < policy.window:
            out.append((backup.backup_id, True, f"younger than {days} (age {_age_text(age)}){state}"))
        elif newer < policy.min_keep:
            what = "one of the newest verified backups" if backup.verified else "not verified"
            out.append(
                (
                    backup.backup_id,
                    True,
                    f"older than {days} (age {_age_text(age)}) but kept by min_keep={policy.min_keep}: "
                    f"{what}, only {_plural(newer, 'newer verified backup')} exist",
                )
            )
        else:
            out.append(
                (
                    backup.backup_id,
                    False,
                    f"older than {days} (age {_age_text(age)}){state} and "
                    f"{_plural(newer, 'newer verified backup')} exist",
                )
            )
    return out


@st.composite
def cases(draw, *, tiers: bool = True, pins: bool = True):
    """(catalog, now, policy): up to 60 backups spread over ~500 days, some unverified or pinned."""
    now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=draw(st.integers(0, 3 * 365 * 24 * 60)))
    hours = draw(st.lists(st.integers(0, 500 * 24), min_size=0, max_size=60, unique=True))
    catalog = [
        mem_backup(
            now - timedelta(hours=h, minutes=5),
            verified=draw(st.sampled_from([None, True, True, False])),
            pin=("kept for audit" if pins and draw(st.integers(0, 9)) == 0 else None),
        )
        for h in hours
    ]
    policy = RetentionPolicy(
        draw(st.integers(1, 60)),
        draw(st.integers(1, 5)),
        draw(st.integers(0, 12)) if tiers else 0,
        draw(st.integers(0, 15)) if tiers else 0,
    )
    return catalog, now, policy


@given(cases(tiers=False, pins=False))
@settings(max_examples=200, deadline=None)
def test_property_tiers_off_is_the_old_policy_exactly(case):
    catalog, now, policy = case
    new = [(d.backup.backup_id, d.keep, d.reason) for d in policy.evaluate(catalog, now)]
    assert new == old_evaluate(policy, catalog, now)


@given(cases())
@settings(max_examples=300, deadline=None)
def test_property_never_fewer_than_min_keep_verified_unpinned_backups(case):
    catalog, now, policy = case
    decisions = policy.evaluate(catalog, now)
    good = [d for d in decisions if d.backup.verified and pin_reason(d.backup) is None]
    assert all(d.keep for d in good[-policy.min_keep :])  # the newest min_keep of them, oldest first
    assert sum(d.keep for d in good) >= min(policy.min_keep, len(good))


@given(cases())
@settings(max_examples=300, deadline=None)
def test_property_pins_never_expire(case):
    catalog, now, policy = case
    for d in policy.evaluate(catalog, now):
        if pin_reason(d.backup) is not None:
            assert d.keep and d.reason.startswith("pinned: ")


def week_start(at: datetime) -> date:
    return at.date() - timedelta(days=at.weekday())


def months_between(earlier: datetime, later: datetime) -> int:
    return (later.year - earlier.year) * 12 + later.month - earlier.month


def expected_members(backups: list[Backup], now: datetime, policy: RetentionPolicy) -> dict[str, set[str]]:
    """Backup id -> the tiers it is the member of, from calendar arithmetic (not the policy)."""
    groups: dict[tuple[str, object], list[Backup]] = {}
    for b in backups:
        t = b.finished_at
        if 0 <= (week_start(now) - week_start(t)).days // 7 < policy.keep_weekly:
            groups.setdefault(("weekly", week_start(t)), []).append(b)
        if 0 <= months_between(t, now) < policy.keep_monthly:
            groups.setdefault(("monthly", (t.year, t.month)), []).append(b)
    members: dict[str, set[str]] = {}
    for (tier, _), group in groups.items():
        good = [b for b in group if b.verified]
        member = max(good or group, key=lambda b: b.sort_key)
        members.setdefault(member.backup_id, set()).add(tier)
    return members


@given(cases(pins=False), st.integers(0, 400 * 24))
@settings(max_examples=300, deadline=None)
def test_property_a_tier_member_is_never_deleted_before_its_tier_expires(case, later_hours):
    """The member of every week (month) of the tier is kept and its reason names the tier;
    after applying the decisions, it is still kept at any later time while its week
    (month) is within the tier."""
    catalog, now, policy = case
    decisions = by_id(policy.evaluate(catalog, now))
    members = expected_members(catalog, now, policy)
    for backup_id, tiers in members.items():
        assert decisions[backup_id].keep
        for tier in tiers:
            assert f"{tier} tier: newest" in decisions[backup_id].reason, decisions[backup_id].reason
    assert not [
        d.reason for d in decisions.values() if "tier: newest" in d.reason and d.backup.backup_id not in members
    ]
    survivors = [d.backup for d in decisions.values() if d.keep]
    later = now + timedelta(hours=later_hours)
    after = by_id(policy.evaluate(survivors, later))
    for backup_id, tiers in members.items():
        b = after[backup_id].backup
        still = (
            "weekly" in tiers and (week_start(later) - week_start(b.finished_at)).days // 7 < policy.keep_weekly
        ) or ("monthly" in tiers and months_between(b.finished_at, later) < policy.keep_monthly)
        if still:
            assert after[backup_id].keep, (backup_id, after[backup_id].reason)


@given(cases())
@settings(max_examples=200, deadline=None)
def test_property_tiers_and_pins_only_ever_keep_more(case):
    catalog, now, policy = case
    base = RetentionPolicy(policy.retention_days, policy.min_keep)
    plain = [d.backup.backup_id for d in base.evaluate([b for b in catalog if pin_reason(b) is None], now) if d.keep]
    full = {d.backup.backup_id for d in policy.evaluate(catalog, now) if d.keep}
    assert set(plain) <= full
