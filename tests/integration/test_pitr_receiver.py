"""The WAL receiver (``python -m dbops.pitr.receiver``) against a real PostgreSQL 16 under a writer.

Each test runs the receiver as a real subprocess streaming from the scratch cluster of
tests/pitr_support.py into its own backup root, over its own slot. Segments are completed with
``pg_switch_wal()`` instead of writing 16 MiB each. What must hold: every completed segment is
sealed (size and sha256 in the catalog match the files, files 0600, folders 0700, no raw copy
left); SIGKILL of the receiver or of the server leaves no gap, duplicate or corrupt entry and
the chain continues after the restart; an archive of another cluster or history is refused
with a clear reason; a missing privilege is named.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import stat
import time

import pytest

from dbops.pitr.wal import check_chain, segment_start_lsn
from tests.pitr_support import wait_for

SEGMENT = 16 * 1024 * 1024


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def catalog_names(stack) -> list[str]:
    """The names of the catalog's entry lines as written (duplicates would show here)."""
    lines = stack.archive.catalog_path.read_text().splitlines()[1:]
    return [json.loads(line)["name"] for line in lines]


def assert_sound_archive(stack) -> list:
    """Every catalogued file matches its line; modes; no raw completed segment or tmp file;
    the chain from the first sealed segment to the last has no gap. The segment entries."""
    archive = stack.archive
    wait_for(lambda: archive.completed_unsealed() == [], 15, "the sealer to catch up")
    assert archive.header()["system_identifier"] == stack.cluster.system_identifier()
    entries = archive.entries()
    segments = [e for e in entries if e.kind == "segment"]
    assert segments, "nothing was sealed"
    names = catalog_names(stack)
    assert len(names) == len(set(names)), f"a file is catalogued twice: {names}"
    for entry in segments:
        sealed = archive.segments / entry.file
        data = sealed.read_bytes()
        assert entry.file == f"{entry.name}.gz"
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry.size, entry.sha256), entry.name
        raw = gzip.decompress(data)
        assert (len(raw), hashlib.sha256(raw).hexdigest()) == (SEGMENT, entry.raw_sha256), entry.name
        assert mode(sealed) == 0o600, entry.file
    for folder in (stack.backup_root / "postgres_wal", archive.segments):
        assert mode(folder) == 0o700, folder
    for path in (archive.catalog_path, archive.status_path):
        assert mode(path) == 0o600, path
    leftovers = [
        p.name for p in archive.segments.iterdir() if re.fullmatch(r"[0-9A-F]{24}", p.name) or ".tmp-" in p.name
    ]
    assert leftovers == [], f"raw completed segments or tmp files left: {leftovers}"
    first = segments[0]
    problems = check_chain(entries, first.timeline, segment_start_lsn(first.segno, SEGMENT), segment_size=SEGMENT)
    assert problems == [], problems
    return segments


def test_completed_segments_are_sealed_under_a_writer(pitr_cluster, pitr_stack):
    stack = pitr_stack
    stack.start_receiver()
    stack.wait_streaming()
    assert stack.slot_state()[0] is True, "the receiver streams over its slot"
    with pitr_cluster.writer() as writer:
        completed = []
        for _ in range(3):
            time.sleep(0.3)  # rows land in each segment
            completed.append(stack.switch_wal())
        sealed = [stack.wait_sealed(name) for name in completed]
    assert writer.rows > 0
    segments = assert_sound_archive(stack)
    assert {e.name for e in sealed} <= {e.name for e in segments}
    partial = stack.archive.partial()
    assert partial is not None and mode(partial) == 0o600, "the growing segment stays raw, private"
    status = stack.status()
    assert status["state"] == "streaming" and status["slot"] == stack.slot
    assert status["system_identifier"] == pitr_cluster.system_identifier()
    assert status["last_sealed"] in {e.name for e in segments}
    log = stack.output()
    for name in completed:
        assert re.search(rf" sealed {name} file={name}\.gz size=\d+ ms=\d+", log), name
    assert stack.secrets_absent_from(log) and stack.secrets_absent_from(stack.archive.status_path.read_text())
    assert stack.stop_receiver() == 0
    assert stack.status()["state"] == "stopped"


def test_sigkill_of_the_receiver_leaves_no_gap(pitr_cluster, pitr_stack):
    stack = pitr_stack
    stack.start_receiver()
    stack.wait_streaming()
    with pitr_cluster.writer() as writer:
        stack.wait_sealed(stack.switch_wal())
        # right after a switch (mid-seal), and later; receiver and pg_receivewal killed at once,
        # then the receiver alone (its pg_receivewal must end with it, not hold the slot)
        for delay, group in ((0.0, True), (0.15, True), (0.6, False)):
            name = stack.switch_wal()
            time.sleep(delay)
            stack.kill_receiver(group=group)  # SIGKILL
            stack.start_receiver()
            stack.wait_streaming()
            stack.wait_sealed(name)
        time.sleep(0.3)
        stack.wait_sealed(stack.switch_wal())
    assert writer.rows > 0
    segments = assert_sound_archive(stack)
    assert len(segments) >= 5
    for entry in segments:
        assert stack.archive.verify(entry, deep=True) is None, entry.name


def test_the_receiver_reconnects_after_a_server_crash(pitr_cluster, pitr_stack):
    stack = pitr_stack
    stack.start_receiver()
    stack.wait_streaming()
    with pitr_cluster.writer() as writer:
        stack.wait_sealed(stack.switch_wal())
        time.sleep(0.3)
        before = stack.status()["restarts"]
        stack.kill_server()  # SIGKILL the postmaster
        wait_for(lambda: stack.status()["state"] == "error", 15, "the receiver to notice the crash")
        stack.start_server()  # crash recovery, same timeline
        stack.wait_streaming(timeout=60, restarts_above=before)  # reconnected by itself
        rows_at_restart = writer.rows
        time.sleep(0.5)
        stack.wait_sealed(stack.switch_wal(), timeout=30)
        time.sleep(0.3)
        stack.wait_sealed(stack.switch_wal(), timeout=30)
    assert writer.rows > rows_at_restart, "the writer went on after the restart"
    assert_sound_archive(stack)
    assert "pg_receivewal exited" in stack.output()


def test_a_timeline_switch_is_followed(pitr_cluster, pitr_stack):
    """A restore into the cluster ends its timeline: pg_receivewal follows the switch, the
    history file is sealed, the old timeline's last segment stays a raw ``.partial`` (never
    sealed: the new timeline's segment of that number holds the same WAL up to the switch),
    and the chain runs across the switch without a gap."""
    stack = pitr_stack
    stack.start_receiver()
    stack.wait_streaming()
    old_timeline = stack.timeline()
    stack.wait_sealed(stack.switch_wal())
    with pitr_cluster.connect() as conn:
        conn.execute("SELECT pg_logical_emit_message(false, 'dbops-test', 'before the switch')")
    restarts = stack.status()["restarts"]
    new_timeline = stack.new_timeline()
    assert new_timeline == old_timeline + 1
    stack.wait_streaming(timeout=60, restarts_above=restarts)
    after = stack.wait_sealed(stack.switch_wal(), timeout=30)
    assert after.timeline == new_timeline
    history = stack.archive.find(f"{new_timeline:08X}.history")
    assert history is not None and history.kind == "history"
    wait_for(lambda: stack.status()["timeline"] == new_timeline, 10, "the heartbeat to show the new timeline")
    old_partials = [p for p in stack.archive.partials() if int(p.name[:8], 16) == old_timeline]
    assert len(old_partials) == 1, stack.archive.partials()
    assert stack.archive.find(old_partials[0].name.removesuffix(".partial")) is None, "an old partial is never sealed"
    assert f"kept {old_partials[0].name}" in stack.output()
    assert_sound_archive(stack)  # the chain crosses the switch


def test_an_archive_of_another_cluster_is_refused(pitr_stack):
    stack = pitr_stack
    stack.archive.ensure()
    stack.archive.init("1234567890123456789", SEGMENT)  # another system identifier
    catalog = stack.archive.catalog_path.read_bytes()
    stack.start_receiver()
    assert stack.wait_exit(30) == 2
    status = stack.status()
    assert status["state"] == "error"
    assert "1234567890123456789" in status["error"] and "new archive" in status["error"]
    assert "1234567890123456789" in stack.output() and "new cluster needs a new archive" in stack.output()
    assert stack.archive.catalog_path.read_bytes() == catalog, "the catalog was not touched"
    assert list(stack.archive.segments.iterdir()) == [], "nothing was streamed"
    assert stack.slot_state() is None, "refused before creating the slot"


def test_a_server_on_an_older_timeline_is_refused(pitr_cluster, pitr_stack):
    """The archive already followed timeline T+1; this server is on timeline T: another history."""
    stack = pitr_stack
    archive = stack.archive
    archive.ensure()
    archive.init(pitr_cluster.system_identifier(), SEGMENT)
    timeline = stack.timeline()
    history = archive.segments / f"{timeline + 1:08X}.history"
    history.write_text(f"{timeline}\t0/5000000\tno recovery target specified\n")
    archive.seal(history)
    stack.start_receiver()
    assert stack.wait_exit(30) == 2
    error = stack.status()["error"]
    assert f"timeline {timeline}," in error and f"timeline {timeline + 1}" in error and "another history" in error
    assert [p.name for p in archive.segments.iterdir()] == [history.name], "nothing was streamed"


@pytest.mark.parametrize("problem", ["wrong password", "no REPLICATION attribute"])
def test_a_missing_privilege_is_named_and_retried(pitr_cluster, pitr_stack, problem):
    stack = pitr_stack
    if problem == "wrong password":
        stack.set_login(pitr_cluster.replication_user, "not-the-password")
        expected = "rejected the password"
    else:
        role, password = "dbops_pitr_test_norepl", "test-only-password"
        with pitr_cluster.connect() as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")
            conn.execute(f"CREATE ROLE {role} LOGIN NOREPLICATION PASSWORD '{password}'")
        stack.set_login(role, password)
        expected = f"role '{role}' lacks the REPLICATION attribute"
    stack.start_receiver()
    status = wait_for(lambda: (s := stack.status()) and s["state"] == "error" and s, 20, "an error state")
    assert expected in status["error"], status["error"]
    assert expected in stack.output()
    assert stack.receiver_running(), "a server-side problem is retried, not fatal"
    assert stack.slot_state() is None
    assert stack.stop_receiver() == 0
