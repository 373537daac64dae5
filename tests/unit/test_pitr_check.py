"""The WAL check's rules (dbops.pitr.check.evaluate), one finding at a time, without a server:
the measured row is what include/sql/pitr/wal_status.sql returns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dbops.backup.repository import BackupRepository, format_time
from dbops.pitr import check
from dbops.pitr.wal import WalEntry, segment_name
from tests.unit.test_status_pitr import make_base_backup

UTC = UTC
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
SYSID = "7345678901234567890"
SEG = 16 * 1024 * 1024
HEADER = {"format": "dbops-wal", "version": 1, "system_identifier": SYSID, "wal_segment_size": SEG}


def server(**changes) -> dict:
    row = {
        "wal_level": "replica",
        "max_wal_senders": 10,
        "max_replication_slots": 10,
        "system_identifier": SYSID,
        "timeline": 1,
        "current_lsn": "0/6000100",
        "server_time": NOW,
        "slot_exists": True,
        "slot_type": "physical",
        "slot_active": True,
        "restart_lsn": "0/6000000",
        "slot_wal_status": "reserved",
        "retained_bytes": 256,
        "receiver_name": "pg_receivewal",
        "write_lsn": "0/6000100",
        "lag_bytes": 0,
        "write_lag_s": None,
        "reply_age_s": 0.5,
    }
    row.update(changes)
    return row


def segments(*segnos: int) -> list[WalEntry]:
    return [
        WalEntry(
            segment_name(1, n),
            "segment",
            1,
            n,
            f"{segment_name(1, n)}.gz",
            900,
            "0" * 64,
            "1" * 64,
            NOW - timedelta(minutes=60 - n),
        )
        for n in segnos
    ]


@pytest.fixture
def bases(tmp_path):
    repo = BackupRepository(tmp_path / "backups")
    make_base_backup(repo, NOW - timedelta(hours=5), 1, "0/2000028", "0/2000100")
    return repo.list("postgres_pitr")


def judge(bases, **given):
    args = dict(
        server=server(),
        server_error=None,
        header=HEADER,
        status={"state": "streaming", "heartbeat_at": format_time(NOW - timedelta(seconds=3))},
        entries=segments(2, 3, 4, 5),
        unsealed=[],
        bases=bases,
        rehash_problems=[],
        latest_received=NOW - timedelta(seconds=3),
        end_segno=5,
        slot="dbops_pitr",
        max_lag_s=60.0,
        seal_timeout_s=300.0,
        now=NOW,
    )
    args.update(given)
    return check.evaluate(**args)


def test_a_streaming_receiver_and_a_complete_chain_pass_with_the_window(bases):
    result = judge(bases)
    assert result.ok and result.problems == [], result.problems
    assert result.lag_s == 0.0 and result.segments == 4
    assert result.earliest == bases[0].manifest["details"]["consistent_at"]
    assert result.latest == format_time(NOW - timedelta(seconds=3))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"server": server(wal_level="minimal")}, "wal_level is 'minimal'"),
        ({"server": server(max_wal_senders=0)}, "max_wal_senders is 0"),
        ({"server": server(slot_exists=False, slot_active=False)}, "replication slot 'dbops_pitr' does not exist"),
        ({"server": server(slot_wal_status="lost")}, "lost WAL"),
        (
            {"server": server(slot_active=False, retained_bytes=123456)},
            "not in use: no receiver is streaming (the server keeps 123456 bytes",
        ),
        (
            {"server": server(system_identifier="1")},
            "the WAL archive belongs to system 7345678901234567890, the server is 1",
        ),
        (
            {"server": None, "server_error": "OperationalError: refused"},
            "the server cannot be read: OperationalError: refused",
        ),
        ({"status": None}, "the WAL receiver is not streaming: no receiver.json"),
        (
            {"status": {"state": "streaming", "heartbeat_at": format_time(NOW - timedelta(minutes=5))}},
            "the last heartbeat is 300 s old",
        ),
        (
            {"status": {"state": "error", "error": "system identifier differs", "heartbeat_at": format_time(NOW)}},
            "system identifier differs",
        ),
        ({"server": server(lag_bytes=5_000_000, write_lag_s=95.0)}, "95 s (5000000 bytes) behind the server"),
        (
            {"unsealed": [("000000010000000000000006", 301.0), ("000000010000000000000007", 20.0)]},
            "1 completed WAL file(s) unsealed for over 300 s: 000000010000000000000006",
        ),
        ({"entries": segments(2, 3, 5)}, "missing 000000010000000000000004"),
        ({"entries": segments(3, 4, 5)}, "000000010000000000000002"),
        (
            {"entries": segments(2, 3, 4), "end_segno": 5},
            "000000010000000000000005",
        ),  # the one before the growing segment
        ({"rehash_problems": ["sealed WAL file x.gz: sha256 differs"]}, "sealed WAL file x.gz: sha256 differs"),
    ],
)
def test_each_finding_fails_the_check_naming_it(bases, given, expected):
    result = judge(bases, **given)
    assert not result.ok
    assert any(expected in p for p in result.problems), result.problems


def test_lag_without_a_measured_interval_is_the_age_of_the_last_reply(bases):
    result = judge(bases, server=server(lag_bytes=4096, write_lag_s=None, reply_age_s=75.0))
    assert result.lag_s == 75.0 and result.lag_bytes == 4096 and not result.ok


def test_no_base_backup_is_a_problem_not_a_pass():
    result = judge([])
    assert not result.ok and result.problems == [
        "no base backup yet: nothing can be recovered (dbops_base_backup takes one)"
    ]
    assert result.earliest is None and result.latest is None


def test_the_window_starts_at_the_oldest_base_backup_whose_chain_reaches_the_end(tmp_path):
    repo = BackupRepository(tmp_path / "backups")
    make_base_backup(repo, NOW - timedelta(hours=9), 1, "0/1000028", "0/1000100")  # its segment 1 was lost
    make_base_backup(repo, NOW - timedelta(hours=5), 1, "0/2000028", "0/2000100")
    older, newer = repo.list("postgres_pitr")
    result = judge([older, newer])
    assert not result.ok and any(
        f"base backup {older.backup_id}" in p and "000000010000000000000001" in p for p in result.problems
    )
    assert result.earliest == newer.manifest["details"]["consistent_at"]
