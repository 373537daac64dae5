"""The nightly deadline's arithmetic and its setting (pure Python)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dbops.config import ConfigError, load_config
from dbops.deadlines import interval_to_clock, parse_clock

NOON = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_the_interval_runs_from_the_fire_time_to_the_next_deadline_clock_time():
    assert interval_to_clock("0 2 * * *", "06:00", "UTC", around=NOON) == timedelta(hours=4)
    assert interval_to_clock("0 2 * * *", "02:01", "UTC", around=NOON) == timedelta(minutes=1)
    assert interval_to_clock("0 22 * * *", "06:00", "UTC", around=NOON) == timedelta(hours=8)  # the next morning
    assert interval_to_clock("0 2 * * *", "02:00", "UTC", around=NOON) == timedelta(days=1)


def test_the_interval_follows_the_wall_clock_of_the_schedule_timezone():
    # the night the clocks go forward in Berlin (2026-03-29, 02:00 -> 03:00): 01:00 to 06:00 is 4 hours
    night = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    assert interval_to_clock("0 1 * * *", "06:00", "Europe/Berlin", around=night) == timedelta(hours=4)
    assert interval_to_clock("0 1 * * *", "06:00", "Europe/Berlin", around=NOON) == timedelta(hours=5)


@pytest.mark.parametrize("bad", ["6:00", "24:00", "06:60", "6am", "", "06:00:00"])
def test_a_bad_deadline_is_refused_naming_the_key(bad):
    with pytest.raises(ValueError, match="HH:MM"):
        parse_clock(bad)
    with pytest.raises(ConfigError, match="schedules.nightly_deadline"):
        load_config(environ={"DBOPS_SCHEDULES__NIGHTLY_DEADLINE": bad})


def test_the_deadline_defaults_to_six_and_can_be_turned_off():
    assert load_config(environ={}).schedules.nightly_deadline == "06:00"
    assert load_config(environ={"DBOPS_SCHEDULES__NIGHTLY_DEADLINE": "null"}).schedules.nightly_deadline is None
