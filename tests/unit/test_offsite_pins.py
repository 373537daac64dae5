"""The offsite pins file (pins.json at a target's root) and the pin DAG's Param checks.
The real targets are exercised in tests/integration/test_pin_dag.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from dbops.offsite.common import SeriesKey
from dbops.offsite.pins import PINS_REL, PinsUnreadable, parse_pins, read_pins, series_pins, set_pin

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


class Files:
    """A FileTarget's small-file half, in memory (the real ones: rsync and S3 tests)."""

    name = "memory"

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.writes = 0

    def location(self) -> str:
        return "memory://"

    def read_file(self, rel: str, log) -> bytes | None:
        return self.files.get(rel)

    def write_file(self, rel: str, data: bytes, log) -> None:
        self.files[rel] = data
        self.writes += 1


def test_pin_and_unpin_round_trip_and_are_idempotent():
    target = Files()
    pg = SeriesKey("postgres", "ai_platform")
    assert read_pins(target, print) == {}
    assert set_pin(target, pg, "20261004T020000Z", {"reason": "audit", "by": "manual__1"}, now=NOW, log=print)
    assert not set_pin(target, pg, "20261004T020000Z", {"reason": "audit", "by": "manual__2"}, now=NOW, log=print)
    assert set_pin(target, SeriesKey("redis"), "20261005T020000Z", {"reason": "x", "by": "m"}, now=NOW, log=print)
    body = json.loads(target.files[PINS_REL])
    assert body["format"] == "dbops-offsite-pins" and set(body["pins"]) == {
        "postgres/ai_platform/20261004T020000Z",
        "redis/20261005T020000Z",
    }
    assert body["pins"]["postgres/ai_platform/20261004T020000Z"]["at"] == "2026-12-06T09:00:00Z"
    pins = read_pins(target, print)
    assert series_pins(pins, pg) == {"20261004T020000Z": "audit (pinned in pins.json of the target)"}
    assert series_pins(pins, SeriesKey("postgres")) == {}  # another series
    assert set_pin(target, pg, "20261004T020000Z", None, now=NOW, log=print)
    assert not set_pin(target, pg, "20261004T020000Z", None, now=NOW, log=print)
    assert set(read_pins(target, print)) == {"redis/20261005T020000Z"} and target.writes == 3
    with pytest.raises(ValueError, match="reason"):
        set_pin(target, pg, "20261004T020000Z", {"reason": " "}, now=NOW, log=print)
    with pytest.raises(ValueError, match="not a backup id"):
        set_pin(target, pg, "../../etc", {"reason": "x"}, now=NOW, log=print)


@pytest.mark.parametrize(
    "data",
    [
        b"{",
        b"[]",
        b'{"format": "other", "version": 1, "pins": {}}',
        b'{"format": "dbops-offsite-pins", "version": 1, "pins": {"a": {}}}',
        b"\xff",
    ],
)
def test_an_unreadable_pins_file_is_an_error_never_no_pins(data):
    with pytest.raises(PinsUnreadable, match="pins.json is unreadable"):
        parse_pins(data, "s3")
    target = Files()
    target.files[PINS_REL] = data
    with pytest.raises(PinsUnreadable):  # and it is never overwritten by a pin
        set_pin(target, SeriesKey("redis"), "20261005T020000Z", {"reason": "x"}, now=NOW, log=print)
    assert target.files[PINS_REL] == data


def test_pin_params_are_refused_naming_the_bad_one():
    from dbops.tasks.pin import check_pin_params

    good = {
        "store": "postgres",
        "subject": "ai_platform",
        "backup_id": "20261004T020000Z",
        "action": "pin",
        "reason": "audit",
    }
    assert check_pin_params(good)["subject"] == "ai_platform"
    assert check_pin_params({**good, "store": "postgres_pitr", "subject": ""})["subject"] is None
    assert check_pin_params({**good, "action": "unpin", "reason": ""})["reason"] is None
    for bad, match in [
        ({"store": "mysql"}, "store 'mysql'"),
        ({"backup_id": "latest"}, "backup_id 'latest'"),
        ({"backup_id": "../../etc"}, "not a backup id"),
        ({"action": "drop"}, "action 'drop'"),
        ({"reason": "  "}, "needs a reason"),
        ({"subject": "../x"}, "subject"),
        ({"reason": "x" * 501}, "at most 500"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_pin_params({**good, **bad})
