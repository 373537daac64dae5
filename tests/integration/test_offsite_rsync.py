"""rsync over SSH against the real local sshd + rsync (devstack ``offsite``), and against a
private sshd of this test that is killed mid-copy."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dbops.backup.repository import BackupRepository, checks_ok
from dbops.backup.retention import RetentionPolicy
from dbops.offsite.common import OffsiteVerificationError, SeriesKey
from dbops.offsite.crypto import Encryption
from dbops.offsite.restore import fetch_backup
from dbops.offsite.retention import apply_offsite_retention
from dbops.offsite.rsync import RsyncTarget
from dbops.offsite.sync import ship_all, verify_all
from dbops.tools import ToolError
from tests.offsite_support import Log, daily_backups, make_backup, remote_dir, remove_remote, ssh_params

pytestmark = pytest.mark.integration
UTC = UTC
POLICY = RetentionPolicy(30, 3)
STORES = ["postgres", "redis", "kafka", "mongo"]
SSHD = "/usr/sbin/sshd"


@pytest.fixture
def conn(devstack):
    return devstack.conn("dbops_offsite_ssh")


@pytest.fixture
def remote(devstack):
    path = remote_dir(devstack)
    yield path
    remove_remote(path)


def rsync_target(conn, remote: Path, **kwargs) -> RsyncTarget:
    params = kwargs.pop("params", None) or ssh_params(conn)
    return RsyncTarget(params, str(remote), work_dir=kwargs.pop("work_dir", None), **kwargs)


def ship(target, repo, policy=POLICY, **kwargs):
    kwargs.setdefault("encryption", None)
    return ship_all(target, repo, STORES, policy, now=datetime.now(UTC), dry_run=False, log=Log(), **kwargs)


def test_full_sync_then_a_second_sync_moves_only_the_catalog(conn, remote, repo):
    backups = [
        make_backup(repo, "postgres", "ai_platform", files={"toc.dat": 2000, "3001.dat.gz": 1_500_000}),
        make_backup(repo, "postgres", "_globals", files={"globals.sql": b"CREATE ROLE app;\n"}),
        make_backup(repo, "redis", files={"dump.rdb": 700_000}),
        make_backup(repo, "mongo", files={"ai_platform.archive.gz": 300_000}),
    ]
    total = sum(b.total_bytes for b in backups)
    with rsync_target(conn, remote) as target:
        first = ship(target, repo)
        assert len(first["shipped"]) == 4
        assert total <= first["bytes"]["literal_bytes"] < total + 20_000  # data plus manifests
        verified = verify_all(
            target,
            repo,
            STORES,
            expected=first["expected"],
            shipped=first["shipped"],
            deep=False,
            encryption=None,
            log=Log(),
        )
        assert verified["checked"] == 4 and verified["content_checked"] == 4
        second = ship(target, repo)
    assert second["shipped"] == [] and second["present"] == 4
    assert second["bytes"]["bytes_sent"] == 0 and second["bytes"]["literal_bytes"] == 0
    assert second["wire_bytes"] == second["catalog_bytes"] < 0.02 * first["wire_bytes"]

    # laid out like the repository, private, owned by the offsite user, no staging left
    for backup in backups:
        folder = remote.joinpath(*backup.path.relative_to(repo.root).parts)
        for entry in backup.manifest["files"]:
            remote_file = folder / entry["path"]
            assert remote_file.read_bytes() == (backup.path / entry["path"]).read_bytes()
            assert stat.S_IMODE(remote_file.stat().st_mode) == 0o600
        assert (folder / "manifest.json").read_bytes() == (backup.path / "manifest.json").read_bytes()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert folder.owner() == conn["login"]
    assert all(not any(p.iterdir()) for p in remote.rglob(".staging"))


def test_a_wrong_host_key_is_refused_and_the_key_file_does_not_outlive_the_task(conn, remote, repo, tmp_path):
    make_backup(repo, "redis")
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    target = rsync_target(conn, remote, params=ssh_params(conn, host_key=wrong))
    with target:
        session_dir = target.session.dir
        with pytest.raises(ToolError, match="Host key verification failed"):
            ship(target, repo)
    assert not session_dir.exists()
    assert not remote.exists()


def test_verify_catches_a_changed_a_truncated_and_an_extra_file(conn, remote, repo):
    a = make_backup(repo, "redis", files={"dump.rdb": 50_000})
    b = make_backup(repo, "kafka", files={"topics.json": 20_000})
    with rsync_target(conn, remote) as target:
        report = ship(target, repo)
        check = dict(expected=report["expected"], deep=False, encryption=None, log=Log())
        verify_all(target, repo, STORES, shipped=[], **check)
        # bit rot on the server: same size, other bytes
        rotten = remote / "redis" / a.backup_id / "dump.rdb"
        data = bytearray(rotten.read_bytes())
        data[1000] ^= 0xFF
        rotten.write_bytes(bytes(data))
        verify_all(target, repo, STORES, shipped=[], **check)  # sizes alone cannot see it
        with pytest.raises(OffsiteVerificationError, match="dump.rdb: sha256"):
            verify_all(target, repo, STORES, shipped=[], **{**check, "deep": True})
        # truncation and a stranger are seen by the listing on every run
        (remote / "kafka" / b.backup_id / "topics.json").write_bytes(b"{}")
        (remote / "kafka" / b.backup_id / "notes.txt").write_text("?")
        with pytest.raises(OffsiteVerificationError) as err:
            verify_all(target, repo, STORES, shipped=[], **check)
    assert "topics.json is 2 bytes, expected 20000" in str(err.value)
    assert "notes.txt is not part of the backup" in str(err.value)


def test_a_rotten_staged_file_that_rsync_would_trust_is_caught_and_resent(conn, remote, repo):
    """A file already in the remote staging folder with the right size and mtime but other
    bytes (bit rot, a bad disk): rsync's quick check skips it, the arrival check does not."""
    backup = make_backup(repo, "redis", files={"dump.rdb": 100_000})
    source = backup.path / "dump.rdb"
    staging = remote / "redis" / ".staging" / backup.backup_id
    staging.mkdir(parents=True)
    rotten = staging / "dump.rdb"
    rotten.write_bytes(os.urandom(100_000))
    st = source.stat()
    os.utime(rotten, ns=(st.st_atime_ns, st.st_mtime_ns))
    for path in (remote, remote / "redis", staging.parent, staging, rotten):
        shutil.chown(path, conn["login"], conn["login"])
    with rsync_target(conn, remote) as target:
        with pytest.raises(OffsiteVerificationError, match="dump.rdb: sha256"):
            ship(target, repo)
        assert not (remote / "redis" / backup.backup_id).exists()  # not published
        report = ship(target, repo)  # the bad file was removed from staging: sent again
        assert report["shipped"] == [f"redis/{backup.backup_id}"]
    assert (remote / "redis" / backup.backup_id / "dump.rdb").read_bytes() == source.read_bytes()


# --------------------------------------------------------------------------- killed mid-copy


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class PrivateSSHD:
    """An sshd of this test only (own port, host key, config), for the offsite user."""

    def __init__(self, folder: Path, user: str) -> None:
        self.port = _free_port()
        self.host_key = folder / "host_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True)
        self.config = folder / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {folder / 'sshd.pid'}",
                    "AuthorizedKeysFile .ssh/authorized_keys",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes yes",
                    f"AllowUsers {user}",
                ]
            )
            + "\n"
        )
        self.log = folder / "sshd.log"
        self.proc: subprocess.Popen | None = None

    @property
    def host_key_line(self) -> str:
        return " ".join(self.host_key.with_suffix(".pub").read_text().split()[:2])

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen([SSHD, "-D", "-f", str(self.config), "-E", str(self.log)], start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"private sshd did not start: {self.log.read_text()}")

    def kill(self, *, spare_rsync: bool) -> list[int]:
        """SIGKILL this sshd and its session processes (and the remote rsync unless spared);
        every one of them was started by this test."""
        assert self.proc is not None
        victims = [self.proc.pid] + [
            p for p in _descendants(self.proc.pid) if not (spare_rsync and _comm(p) == "rsync")
        ]
        survivors = [p for p in _descendants(self.proc.pid) if p not in victims]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self.proc = None
        return survivors

    def stop(self) -> None:
        if self.proc is not None:
            self.kill(spare_rsync=False)


@pytest.fixture
def private_sshd(conn, tmp_path):
    folder = tmp_path / "sshd"
    folder.mkdir()
    server = PrivateSSHD(folder, conn["login"])
    server.start()
    yield server
    server.stop()


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("crash", [False, True], ids=["connection-killed", "server-and-rsync-killed"])
def test_a_copy_interrupted_by_a_killed_server_resumes_and_nothing_half_written_looks_complete(
    conn, remote, repo, private_sshd, crash
):
    size = 4 * 1024 * 1024
    backup = make_backup(repo, "redis", files={"dump.rdb": size, "small.txt": b"small\n"})
    params = ssh_params(conn, port=private_sshd.port, host_key=private_sshd.host_key_line)
    staging = remote / "redis" / ".staging" / backup.backup_id
    failure: list[BaseException] = []

    def slow_ship() -> None:
        try:
            with rsync_target(conn, remote, params=params, bwlimit_kib=512) as target:
                ship(target, repo)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            failure.append(exc)

    worker = threading.Thread(target=slow_ship)
    worker.start()

    def copied() -> int:
        temps = [p for p in staging.glob(".dump.rdb.*")] if staging.exists() else []
        return max((p.stat().st_size for p in temps), default=0)

    _wait(lambda: copied() >= 1024 * 1024, 30, "a megabyte to arrive")
    survivors = private_sshd.kill(spare_rsync=not crash)
    worker.join(timeout=60)
    assert not worker.is_alive() and failure and isinstance(failure[0], ToolError), failure
    for pid in survivors:  # the remote rsync notices the dropped connection and exits
        _wait(lambda pid=pid: not Path(f"/proc/{pid}").exists() or _comm(pid) == "", 30, "remote rsync to exit")

    # nothing complete-looking: no backup folder, and the catalog (over the shared sshd) is empty
    assert not (remote / "redis" / backup.backup_id).exists()
    with rsync_target(conn, remote) as target:
        catalog = target.catalog(Log())
        assert catalog.count() == 0 and [e.name for e in catalog.staging] == [backup.backup_id]
    partial = staging / ".rsync-partial" / "dump.rdb"
    if not crash:
        assert 0 < partial.stat().st_size < size  # kept for the resume

    private_sshd.start()  # the server is back
    with rsync_target(conn, remote, params=params) as target:
        report = ship(target, repo)
        assert report["shipped"] == [f"redis/{backup.backup_id}"]
        stats = report["bytes"]
        print(f"resumed after the kill ({'crash' if crash else 'connection'}): {stats}")
        if not crash:  # rsync resumed from the partial file: the part already there was not sent again
            assert stats["matched_bytes"] >= 1024 * 1024 and stats["literal_bytes"] < size - 512 * 1024
        verify_all(
            target,
            repo,
            STORES,
            expected=report["expected"],
            shipped=report["shipped"],
            deep=True,
            encryption=None,
            log=Log(),
        )
    published = remote / "redis" / backup.backup_id
    assert sorted(p.name for p in published.iterdir()) == ["dump.rdb", "manifest.json", "offsite.json", "small.txt"]
    assert (published / "dump.rdb").read_bytes() == (backup.path / "dump.rdb").read_bytes()
    assert not staging.exists()


# --------------------------------------------------------------------------- retention and restore


def test_offsite_retention_on_a_forty_day_catalog(conn, remote, repo):
    now = datetime.now(UTC)
    backups = daily_backups(repo, "redis", 40, now=now, size=512)
    with rsync_target(conn, remote) as target:
        ship(target, repo, RetentionPolicy(60, 3))  # a longer window once: all forty are offsite
        for gone in backups[:5] + [backups[-4]]:  # local retention, and one deleted by hand
            repo.delete(gone)
        log = Log()
        plan = apply_offsite_retention(
            target,
            target.catalog(log),
            repo,
            STORES,
            POLICY,
            now=now,
            dry_run=True,
            stale_after=timedelta(hours=48),
            log=log,
        )
        assert plan["series"][0]["obsolete"] == [b.backup_id for b in backups[:10]]
        assert len(list((remote / "redis").glob("2*"))) == 40
        apply_offsite_retention(
            target,
            target.catalog(log),
            repo,
            STORES,
            POLICY,
            now=now,
            dry_run=False,
            stale_after=timedelta(hours=48),
            log=log,
        )
        left = sorted(p.name for p in (remote / "redis").glob("2*"))
        assert left == sorted(b.backup_id for b in backups[10:])
        assert backups[-4].backup_id in left  # missing locally but inside the window
        deleting = remote / "redis" / ".deleting"
        assert not deleting.exists() or not any(deleting.iterdir())
        verify_all(target, repo, STORES, expected=[], shipped=[], deep=False, encryption=None, log=Log())


def test_restore_from_the_encrypted_offsite_copy(conn, remote, repo, tmp_path):
    secret = b"INSERT INTO auth.users VALUES ('alice', 'hash');\n" * 5000
    backup = make_backup(repo, "postgres", "ai_platform", files={"toc.dat": secret, "4000.dat.gz": 900_000})
    enc = Encryption(os.urandom(32), 64 * 1024)
    with rsync_target(conn, remote, work_dir=tmp_path / "outbox") as target:
        first = ship(target, repo, encryption=enc)
        assert not list((tmp_path / "outbox").rglob("*.enc"))  # the encrypted copy was cleaned up
        verify_all(
            target,
            repo,
            STORES,
            expected=first["expected"],
            shipped=first["shipped"],
            deep=True,
            encryption=enc,
            log=Log(),
        )
        folder = remote / "postgres" / "ai_platform" / backup.backup_id
        assert sorted(p.name for p in folder.iterdir()) == [
            "4000.dat.gz.enc",
            "manifest.json",
            "offsite.json",
            "toc.dat.enc",
        ]
        assert secret[:48] not in (folder / "toc.dat.enc").read_bytes()
        assert ship(target, repo, encryption=enc)["bytes"]["literal_bytes"] == 0

        envelope = json.loads((folder / "offsite.json").read_text())
        assert envelope["encryption"]["scheme"] == "aes-256-gcm-chunked-v2" and len(envelope["manifest_mac"]) == 64

        restored = BackupRepository(tmp_path / "restored")
        log = Log()
        got = fetch_backup(target, restored, "postgres", "ai_platform", backup.backup_id, encryption=enc, log=log)

        # the download resumes: what is already there intact is not fetched again, a damaged
        # file with the right size and time is
        key, dest = SeriesKey("postgres", "ai_platform"), tmp_path / "download"
        assert target.download(key, backup.backup_id, dest, Log()).files_transferred == 4
        (dest / "toc.dat.enc").unlink()
        damaged = dest / "4000.dat.gz.enc"
        st = damaged.stat()
        damaged.write_bytes(bytes(st.st_size))
        os.utime(damaged, ns=(st.st_atime_ns, st.st_mtime_ns))
        again = target.download(key, backup.backup_id, dest, Log())
        assert again.files_transferred == 2
        assert damaged.read_bytes() == (folder / "4000.dat.gz.enc").read_bytes()
    assert (got.path / "toc.dat").read_bytes() == secret
    assert (got.path / "4000.dat.gz").read_bytes() == (backup.path / "4000.dat.gz").read_bytes()
    assert got.manifest == backup.manifest and checks_ok(restored.verify(got))
    assert "verified against its manifest" in log.text
    assert restored.latest("postgres", "ai_platform").backup_id == backup.backup_id


def test_incomplete_staging_nothing_will_resume_is_swept(conn, remote, repo):
    kept = make_backup(repo, "redis", files={"a.bin": 100})
    with rsync_target(conn, remote) as target:
        ship(target, repo)
        orphan = remote / "redis" / ".staging" / "20200101T000000Z"
        orphan.mkdir(parents=True)
        (orphan / "a.bin").write_bytes(b"partial")
        for path in (orphan, orphan / "a.bin"):  # as a killed transfer of the offsite user leaves it
            shutil.chown(path, conn["login"], conn["login"])
        old = time.time() - 3 * 86400
        os.utime(orphan, (old, old))
        report = apply_offsite_retention(
            target,
            target.catalog(Log()),
            repo,
            STORES,
            POLICY,
            now=datetime.now(UTC),
            dry_run=False,
            stale_after=timedelta(hours=48),
            log=Log(),
        )
    assert report["incomplete_removed"] == ["redis/20200101T000000Z"]
    assert not orphan.exists() and (remote / "redis" / kept.backup_id).is_dir()


# --------------------------------------------------------------------------- integrity of encrypted copies


def _rewrite_envelope(folder: Path, change) -> None:
    path = folder / "offsite.json"
    data = json.loads(path.read_text())
    change({f["stored_path"]: f for f in data["files"]})
    path.write_text(json.dumps(data))  # keeps the offsite user's file


def test_a_swapped_or_moved_ciphertext_and_a_changed_manifest_are_caught(conn, remote, repo, tmp_path):
    """Someone with write access to the offsite host swaps the two stored files of a backup,
    puts one backup's file into another backup under the same path, and fixes offsite.json
    to match (sizes and stored sha256): the host's hashes agree, decryption does not."""
    a = make_backup(repo, "postgres", "ai_platform", files={"toc.dat": 9000, "3001.dat": 9000})
    b = make_backup(repo, "postgres", "ai_platform", files={"toc.dat": 9000, "3001.dat": 9000})
    enc = Encryption(os.urandom(32), 4096)
    series = remote / "postgres" / "ai_platform"
    fa, fb = series / a.backup_id, series / b.backup_id
    with rsync_target(conn, remote, work_dir=tmp_path / "outbox") as target:
        report = ship(target, repo, encryption=enc)
        check = dict(expected=report["expected"], shipped=[], encryption=enc, log=Log())
        assert verify_all(target, repo, STORES, deep=True, **check)["authenticated"] == 2

        toc_a, data_a = (fa / "toc.dat.enc").read_bytes(), (fa / "3001.dat.enc").read_bytes()
        (fa / "toc.dat.enc").write_bytes(data_a)
        (fa / "3001.dat.enc").write_bytes(toc_a)
        (fb / "toc.dat.enc").write_bytes(toc_a)  # the same path, from backup a

        def swap(files):
            files["toc.dat.enc"]["sha256"], files["3001.dat.enc"]["sha256"] = (
                files["3001.dat.enc"]["sha256"],
                files["toc.dat.enc"]["sha256"],
            )

        _rewrite_envelope(fa, swap)
        _rewrite_envelope(fb, lambda files: files["toc.dat.enc"].update(sha256=hashlib.sha256(toc_a).hexdigest()))
        verify_all(target, repo, STORES, deep=False, **check)  # sizes and recorded hashes all agree
        with pytest.raises(OffsiteVerificationError) as err:
            verify_all(target, repo, STORES, deep=True, **check)
        problems = sorted(err.value.problems)
        assert sorted(p.split(": does not decrypt: ")[0] for p in problems) == sorted(
            [
                f"postgres/ai_platform/{a.backup_id}: 3001.dat.enc",
                f"postgres/ai_platform/{a.backup_id}: toc.dat.enc",
                f"postgres/ai_platform/{b.backup_id}: toc.dat.enc",
            ]
        )
        assert all("encrypted for another file or backup" in p for p in problems), problems

        with pytest.raises(OffsiteVerificationError, match="another file or backup"):  # download + decrypt
            fetch_backup(
                target,
                BackupRepository(tmp_path / "restored"),
                "postgres",
                "ai_platform",
                a.backup_id,
                encryption=enc,
                log=Log(),
            )

        # the manifest itself: any change (here one byte, same parsed content) breaks its mac
        with open(fb / "manifest.json", "ab") as fh:
            fh.write(b"\n")
        with pytest.raises(
            OffsiteVerificationError, match=f"{b.backup_id}: manifest.json does not match its manifest_mac"
        ):
            verify_all(target, repo, STORES, deep=False, **check)
        # without the key nothing can be authenticated: said so, not counted as checked
        blind = verify_all(target, repo, STORES, deep=False, **{**check, "encryption": None})
        assert blind["authenticated"] == 0 and len(blind["unauthenticated"]) == 2
        assert "2 manifests NOT authenticated" in blind["summary"]


def test_the_outbox_is_emptied_after_a_failed_encrypted_ship(conn, remote, repo, tmp_path):
    """Failing midway (the host refuses the folder; the arrival check fails) leaves no
    encrypted copy behind on the worker; the rerun publishes."""
    backup = make_backup(repo, "redis", files={"dump.rdb": 50_000})
    enc = Encryption(os.urandom(32), 4096)
    outbox = tmp_path / "outbox"
    locked = remote / "locked"  # root's, not writable by the offsite user
    locked.mkdir(parents=True, mode=0o755)
    with rsync_target(conn, locked / "inner", work_dir=outbox) as target:
        with pytest.raises(ToolError):
            ship(target, repo, encryption=enc)
    assert outbox.is_dir() and not any(outbox.iterdir())

    # a rotten stored copy already staged with the right size and time: rsync trusts it
    staging = remote / "redis" / ".staging" / backup.backup_id
    staging.mkdir(parents=True)
    rotten = staging / "dump.rdb.enc"
    rotten.write_bytes(os.urandom(enc.stored_size(50_000)))
    st = (backup.path / "dump.rdb").stat()
    os.utime(rotten, ns=(st.st_atime_ns, st.st_mtime_ns))
    for path in (remote, remote / "redis", staging.parent, staging, rotten):
        shutil.chown(path, conn["login"], conn["login"])
    with rsync_target(conn, remote, work_dir=outbox) as target:
        with pytest.raises(OffsiteVerificationError, match="dump.rdb.enc: sha256"):
            ship(target, repo, encryption=enc)
        assert not any(outbox.iterdir())
        assert ship(target, repo, encryption=enc)["shipped"] == [f"redis/{backup.backup_id}"]
    assert not any(outbox.iterdir())
    published = remote / "redis" / backup.backup_id
    assert sorted(p.name for p in published.iterdir()) == ["dump.rdb.enc", "manifest.json", "offsite.json"]
