"""The WAL receiver's judgements that need no server: what a refused connection means, what a
server lacks, which archive it must not stream into, when a heartbeat is stale. The streaming
itself is tested against a real server in tests/integration/test_pitr_receiver.py."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from dbops.pitr.receiver import (
    Refused,
    ServerFacts,
    archive_problems,
    check_environment,
    configuration_problems,
    explain_connect_error,
    format_time,
    parse_size,
    utc_now,
)
from dbops.pitr.wal import WalArchive, heartbeat_problem, parse_lsn

SEGMENT = 16 * 1024 * 1024


def facts(**changes) -> ServerFacts:
    values = dict(
        system_identifier="7300000000000000001",
        timeline=1,
        xlogpos=parse_lsn("0/5000060"),
        wal_level="replica",
        max_wal_senders=10,
        max_replication_slots=10,
        segment_size=SEGMENT,
        server_version_num=160014,
        slot_type=None,
    )
    values.update(changes)
    return ServerFacts(**values)


def test_sizes_as_show_prints_them():
    assert parse_size("16MB") == SEGMENT
    assert parse_size("1GB") == 1024**3
    assert parse_size("8192") == 8192
    with pytest.raises(ValueError):
        parse_size("16 parsecs")


@pytest.mark.parametrize(
    "change, names",
    [
        ({"wal_level": "minimal"}, "wal_level is 'minimal'"),
        ({"max_wal_senders": 0}, "max_wal_senders is 0"),
        ({"max_replication_slots": 0}, "max_replication_slots is 0"),
        ({"slot_type": "logical"}, "exists but is logical"),
    ],
)
def test_each_missing_setting_is_named(change, names):
    problems = configuration_problems(facts(**change), "dbops_pitr")
    assert len(problems) == 1 and names in problems[0]


def test_a_ready_server_has_no_problem():
    assert configuration_problems(facts(), "dbops_pitr") == []
    assert configuration_problems(facts(wal_level="logical", slot_type="physical", max_replication_slots=0), "s") == []


@pytest.mark.parametrize(
    "message, meaning",
    [
        (
            'connection to server at "db" (10.0.0.5), port 5432 failed: FATAL:  no pg_hba.conf entry for replication '
            'connection from host "10.0.0.9", user "dbops_replication", no encryption',
            "host replication dbops_replication",
        ),
        (
            "FATAL:  permission denied to start WAL sender\nDETAIL: "
            " Only roles with the REPLICATION attribute may start "
            "a WAL sender process.",
            "ALTER ROLE dbops_replication REPLICATION",
        ),
        ("FATAL:  number of requested standby connections exceeds max_wal_senders (currently 0)", "max_wal_senders"),
        ("fe_sendauth: no password supplied", "PGPASSFILE needs a line"),
        ('FATAL:  password authentication failed for user "dbops_replication"', "rejected the password"),
        ('FATAL:  role "dbops_replication" does not exist', "CREATE ROLE dbops_replication LOGIN REPLICATION"),
        ("Connection refused\n\tIs the server running", "does not accept connections"),
        ("something new", "cannot open a replication connection: something new"),
    ],
)
def test_a_refused_connection_is_explained(message, meaning):
    explained = explain_connect_error(message, "dbops_replication")
    assert meaning in explained
    assert " ".join(message.split()) in explained, "libpq's own words follow"


def seal_segment(archive: WalArchive, timeline: int, segno: int) -> None:
    raw = archive.segments / f"{timeline:08X}{0:08X}{segno:08X}"
    raw.write_bytes(b"\0" * SEGMENT)
    archive.seal(raw)


def test_an_archive_ahead_of_the_server_is_refused(tmp_path):
    archive = WalArchive(tmp_path / "postgres_wal")
    archive.ensure()
    archive.init("7300000000000000001", SEGMENT)
    assert archive_problems(archive, facts()) == [], "an empty archive takes any server"
    seal_segment(archive, 1, 6)  # the archive holds WAL up to 0/7000000
    assert archive_problems(archive, facts(xlogpos=parse_lsn("0/7000000"))) == []
    behind = archive_problems(archive, facts(xlogpos=parse_lsn("0/6FFFFFF")))
    assert len(behind) == 1 and "before the archive's newest segment ends (0/7000000)" in behind[0]
    history = archive.segments / "00000002.history"
    history.write_text("1\t0/7000000\tno recovery target specified\n")
    archive.seal(history)
    older = archive_problems(archive, facts(xlogpos=parse_lsn("0/9000000")))
    assert len(older) == 1 and "on timeline 1, the archive already holds timeline 2" in older[0]
    assert archive_problems(archive, facts(timeline=2, xlogpos=parse_lsn("0/7000100"))) == []


def test_the_heartbeat_judgement():
    fresh = {"heartbeat_at": format_time(utc_now()), "state": "streaming"}
    assert heartbeat_problem(fresh, max_age_s=15) is None
    assert "never run" in heartbeat_problem(None, max_age_s=15)
    stale = dict(fresh, heartbeat_at=format_time(utc_now() - timedelta(seconds=40)))
    assert "40 s old" in heartbeat_problem(stale, max_age_s=15)
    assert heartbeat_problem(stale, max_age_s=60) is None
    assert "refused" in heartbeat_problem(dict(fresh, state="error", error="refused"), max_age_s=15)


def test_a_password_comes_only_from_a_private_passfile(tmp_path, monkeypatch):
    passfile = tmp_path / "pgpass"
    passfile.write_text("db:5432:*:dbops_replication:x\n")
    os.chmod(passfile, 0o644)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    with pytest.raises(Refused, match="readable by others .mode 644.: chmod 600"):
        check_environment()
    os.chmod(passfile, 0o600)
    monkeypatch.setenv("PGPASSWORD", "x")
    with pytest.raises(Refused, match="PGPASSWORD is set"):
        check_environment()
