"""The offsite layout, the envelope, rsync's statistics, SSH parameters and their temporary
files, the ``offsite`` config section, and the connection helpers (no server needed)."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime

import pytest

from dbops.config import ConfigError, load_config
from dbops.offsite.common import Envelope, SeriesKey, plain_files, split_backup_path, split_staging_path
from dbops.offsite.rsync import SSHParams, SSHSession, check_remote_dir, parse_rsync_stats

UTC = UTC
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHW9Ydn0wDXq4o6sFPy7J8A3c5s2lYDq8tT3V0b7z9sY"


def _private_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return (
        Ed25519PrivateKey.generate()
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        .decode()
    )


# --------------------------------------------------------------------------- layout


def test_paths_inside_backup_folders_are_recognised_and_nothing_else():
    assert split_backup_path("redis/20240101T020000Z/dump.rdb") == (SeriesKey("redis"), "20240101T020000Z", "dump.rdb")
    assert split_backup_path("postgres/ai_platform/20240101T020000Z-2/sub/x.dat") == (
        SeriesKey("postgres", "ai_platform"),
        "20240101T020000Z-2",
        "sub/x.dat",
    )
    for rel in (
        "redis/.staging/20240101T020000Z/x",
        "redis/notanid/x",
        "redis/20240101T020000Z",
        "Redis/20240101T020000Z/x",
        "redis/20240101T020000Z/../x",
        "x",
        "",
    ):
        assert split_backup_path(rel) is None, rel
    assert split_staging_path("redis/.staging/20240101T020000Z") == (SeriesKey("redis"), "20240101T020000Z")
    assert split_staging_path("postgres/db/.staging/abc") == (SeriesKey("postgres", "db"), "abc")
    assert split_staging_path("redis/.staging/a/b") is None


def _manifest() -> dict:
    return {
        "manifest_sha256": "m1",
        "files": [
            {"path": "a.bin", "bytes": 3, "sha256": "a" * 64},
            {"path": "d/b.bin", "bytes": 5, "sha256": "b" * 64},
        ],
    }


def test_the_envelope_round_trips_and_is_checked_against_its_manifest():
    manifest = _manifest()
    env = Envelope("m1", tuple(plain_files(manifest)), None, "rsync", datetime(2024, 1, 1, tzinfo=UTC))
    again = Envelope.from_dict(json.loads(env.to_bytes()))
    assert again == env and again.check_against(manifest) == []
    other = {**manifest, "manifest_sha256": "m2"}
    assert "another manifest" in env.check_against(other)[0]
    fewer = {**manifest, "files": manifest["files"][:1]}
    assert any("differ from the manifest" in p for p in env.check_against(fewer))
    changed = {**manifest, "files": [{**manifest["files"][0], "sha256": "c" * 64}, manifest["files"][1]]}
    assert any("another size/sha256" in p for p in env.check_against(changed))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ok": False}, "successful arrival"),
        ({"format": "other"}, "format"),
        ({"files": []}, "no files"),
        (
            {
                "files": [
                    {
                        "path": "../x",
                        "stored_path": "x",
                        "bytes": 1,
                        "sha256": None,
                        "plain_bytes": 1,
                        "plain_sha256": "a",
                    }
                ]
            },
            "unsafe path",
        ),
        (
            {
                "files": [
                    {
                        "path": "x",
                        "stored_path": "manifest.json",
                        "bytes": 1,
                        "sha256": None,
                        "plain_bytes": 1,
                        "plain_sha256": "a",
                    }
                ]
            },
            "stores a file as",
        ),
        ({"encryption": "yes"}, "encryption"),
    ],
)
def test_a_bad_envelope_is_refused(change, message):
    env = Envelope("m1", tuple(plain_files(_manifest())), None, "s3", datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match=message):
        Envelope.from_dict({**env.to_dict(), **change})


def test_the_manifest_mac_is_kept_and_checked():
    from dbops.offsite.crypto import Encryption

    enc = Encryption(bytes(range(32)), 4096)
    manifest = json.dumps(_manifest()).encode()
    sealed = Envelope(
        "m1",
        tuple(plain_files(_manifest())),
        enc.describe(),
        "rsync",
        datetime(2024, 1, 1, tzinfo=UTC),
        manifest_mac=enc.manifest_mac(manifest),
    )
    again = Envelope.from_dict(json.loads(sealed.to_bytes()))
    assert again == sealed and again.check_manifest_mac(manifest, enc) == []
    # a manifest changed offsite (a file dropped), or the mac stripped, or checked without the key
    dropped = json.dumps({**_manifest(), "files": _manifest()["files"][:1]}).encode()
    assert "does not match its manifest_mac" in again.check_manifest_mac(dropped, enc)[0]
    stripped = Envelope.from_dict({**sealed.to_dict(), "manifest_mac": None})
    assert "has no manifest_mac" in stripped.check_manifest_mac(manifest, enc)[0]
    assert "no encryption key was given" in again.check_manifest_mac(manifest, None)[0]
    other = Encryption(bytes(32), 4096)
    assert f"the key given has id {other.key_id}" in again.check_manifest_mac(manifest, other)[0]
    with pytest.raises(ValueError, match="manifest_mac is not 64 hex digits"):
        Envelope.from_dict({**sealed.to_dict(), "manifest_mac": "abc"})
    # an envelope written before the field existed still parses; unencrypted: nothing to check
    old = {k: v for k, v in sealed.to_dict().items() if k != "manifest_mac"}
    assert Envelope.from_dict(old).manifest_mac is None
    plain = Envelope("m1", tuple(plain_files(_manifest())), None, "s3", datetime(2024, 1, 1, tzinfo=UTC))
    assert plain.check_manifest_mac(manifest, enc) == [] and plain.check_manifest_mac(manifest, None) == []
    # a v1 copy made before macs existed has none to check; a v2 one claiming v1 is refused on decryption
    legacy = Envelope.from_dict({**old, "encryption": {**enc.describe(), "scheme": "aes-256-gcm-chunked-v1"}})
    assert legacy.legacy_unauthenticated and legacy.check_manifest_mac(manifest, enc) == []
    assert not stripped.legacy_unauthenticated


def test_rsync_stats_are_read_with_or_without_separators():
    text = """
Number of regular files transferred: 2
Literal data: 1,048,576 bytes
Matched data: 0 bytes
Total bytes sent: 1,049,001
Total bytes received: 38
"""
    stats = parse_rsync_stats(text)
    assert (stats.files_transferred, stats.literal_bytes, stats.bytes_sent, stats.bytes_received) == (
        2,
        1048576,
        1049001,
        38,
    )
    assert parse_rsync_stats("Literal data: 12 bytes\nMatched data: 99 bytes\n").matched_bytes == 99


def test_remote_dirs_must_be_plain_absolute_and_not_system_folders():
    assert check_remote_dir("/srv/dbops-offsite/") == "/srv/dbops-offsite"
    for bad in ("srv/x", "/", "/etc", "/srv/../etc", "/srv/a b", "/srv/$(rm -rf ~)", "/srv/x;y"):
        with pytest.raises(ValueError):
            check_remote_dir(bad)


def test_the_publish_script_flushes_everything_before_the_rename_and_the_folders_after(tmp_path):
    """The offsite script's publish, run here by ``bash`` with a ``sync`` that records what it
    flushes and whether the backup was visible yet (then runs the real one)."""
    import shutil
    import subprocess

    from dbops.offsite.rsync import REMOTE_SCRIPT, RsyncTarget

    root = tmp_path / "offsite"
    key, bid = SeriesKey("postgres", "ai_platform"), "20240101T020000Z"
    staged = root / "postgres" / "ai_platform" / ".staging" / bid
    (staged / "sub").mkdir(parents=True)
    (staged / "toc.dat").write_bytes(b"toc")
    (staged / "sub" / "a.dat").write_bytes(b"a")
    (staged / ".rsync-partial").mkdir()
    bin_dir, record = tmp_path / "bin", tmp_path / "synced"
    bin_dir.mkdir()
    final = staged.parent.parent / bid
    (bin_dir / "sync").write_text(
        "#!/bin/sh\n"
        f'for a in "$@"; do [ "$a" = -- ] && continue; if [ -e {final} ]; then w=after; else w=before; fi; '
        f'echo "$w $(realpath "$a")" >> {record}; done\n'
        f'exec {shutil.which("sync")} "$@"\n'
    )
    (bin_dir / "sync").chmod(0o755)
    target = RsyncTarget(SSHParams(host="h", user="u", private_key="K"), str(root))
    script = ["bash", str(REMOTE_SCRIPT), "publish", target.root, target.series_dir(key), bid]
    subprocess.run(
        script, input=b'{"ok": true}', check=True, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    )
    assert (final / "offsite.json").read_bytes() == b'{"ok": true}' and not (final / ".rsync-partial").exists()
    lines = record.read_text().splitlines()
    before = {line.split(" ", 1)[1] for line in lines if line.startswith("before ")}
    after = {line.split(" ", 1)[1] for line in lines if line.startswith("after ")}
    assert before == {str(staged / x).rstrip("/.") for x in (".", "sub", "toc.dat", "sub/a.dat", "offsite.json")}
    assert after == {str(final.parent), str(final.parent / ".staging"), str(root / "postgres"), str(root)}
    # the rerun of a publish that already happened refuses to replace it
    again = subprocess.run(script, input=b"{}", capture_output=True)
    assert again.returncode == 3 and b"already exists offsite" in again.stderr


# --------------------------------------------------------------------------- SSH


def test_ssh_params_are_validated():
    good = dict(host="backup.example.org", user="dbops", private_key="KEY", host_key=HOST_KEY)
    SSHParams(**good)
    for change in (
        {"host": "-oProxyCommand=x"},
        {"host": "a b"},
        {"user": "root;id"},
        {"port": 0},
        {"private_key": None},
        {"key_file": "/k"},
        {"host_key": "ssh-dss AAAA"},
        {"host_key": "ssh-ed25519 not*base64"},
        {"no_host_key_check": True},
    ):
        with pytest.raises(ValueError):
            SSHParams(**{**good, **change})
    assert "KEY" not in repr(SSHParams(**good))


def test_known_hosts_lines_follow_openssh():
    params = SSHParams(host="10.0.0.5", user="u", port=2222, private_key="K", host_key=HOST_KEY + " comment")
    assert params.known_hosts_line() == f"[10.0.0.5]:2222 {HOST_KEY}\n"
    assert SSHParams(host="h", user="u", private_key="K", host_key=HOST_KEY).known_hosts_line().startswith("h ssh-")


def test_the_key_lives_in_a_private_file_only_while_the_session_is_open():
    params = SSHParams(host="127.0.0.1", user="u", port=2222, private_key="-----KEY-----", host_key=HOST_KEY)
    with SSHSession(params) as session:
        argv = session.ssh_argv()
        key = argv[argv.index("-i") + 1]
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(session.dir).st_mode) == 0o700
        assert open(key).read() == "-----KEY-----\n"
        opts = " ".join(argv)
        assert "StrictHostKeyChecking=yes" in opts and "BatchMode=yes" in opts and "-F /dev/null" in opts
        known = [a.split("=", 1)[1] for a in argv if a.startswith("UserKnownHostsFile=")][0]
        assert open(known).read() == f"[127.0.0.1]:2222 {HOST_KEY}\n"
        assert "-----KEY-----" not in session.rsh()
        folder = session.dir
    assert not folder.exists()


def test_without_a_host_key_the_check_stays_on_unless_the_connection_turns_it_off():
    with SSHSession(SSHParams(host="h", user="u", private_key="K")) as session:
        assert "StrictHostKeyChecking=yes" in session.ssh_argv() and "known_hosts" in session.host_key_mode()
        assert not any(a.startswith("UserKnownHostsFile") for a in session.ssh_argv())
    with SSHSession(SSHParams(host="h", user="u", private_key="K", no_host_key_check=True)) as session:
        assert "StrictHostKeyChecking=no" in session.ssh_argv() and "NOT CHECKED" in session.host_key_mode()


def test_connection_helpers_read_the_ssh_and_aws_connections(monkeypatch):
    from dbops import runtime
    from dbops.runtime import ssh_params

    key = _private_key()
    conn = {
        "conn_type": "ssh",
        "host": "offsite.example.org",
        "port": 2222,
        "login": "dbops",
        "extra": {"private_key": key, "host_key": HOST_KEY, "no_host_key_check": "false"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_T_OFFSITE", json.dumps(conn))
    params = ssh_params("t_offsite", connect_timeout=7)
    assert (params.host, params.port, params.user, params.connect_timeout) == ("offsite.example.org", 2222, "dbops", 7)
    assert params.private_key == key and params.host_key == HOST_KEY and not params.no_host_key_check

    monkeypatch.setenv(
        "AIRFLOW_CONN_T_PASS", json.dumps({**conn, "extra": {**conn["extra"], "private_key_passphrase": "x"}})
    )
    with pytest.raises(Exception, match="passphrase"):
        ssh_params("t_pass")

    s3 = {
        "conn_type": "aws",
        "login": "AK",
        "password": "SK",
        "extra": {
            "endpoint_url": "http://127.0.0.1:1",
            "region_name": "eu-west-1",
            "config_kwargs": {"s3": {"addressing_style": "path"}},
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_T_S3", json.dumps(s3))
    client = runtime.s3_client("t_s3")
    assert client.meta.endpoint_url == "http://127.0.0.1:1" and client.meta.region_name == "eu-west-1"


# --------------------------------------------------------------------------- config


def test_offsite_config_defaults_and_refusals():
    offsite = load_config(environ={}).offsite
    assert offsite.targets == ["rsync", "s3"] and offsite.encryption is False
    assert (offsite.s3_multipart_chunk_mib, offsite.s3_max_concurrency, offsite.rsync_compress) == (64, 4, False)
    env = {
        "DBOPS_OFFSITE__TARGETS": '["s3"]',
        "DBOPS_OFFSITE__S3_STORAGE_CLASS": "STANDARD_IA",
        "DBOPS_OFFSITE__ENCRYPTION": "true",
        "DBOPS_OFFSITE__ENCRYPTION_KEY": "connection:offsite_key",
    }
    offsite = load_config(environ=env).offsite
    assert offsite.targets == ["s3"] and offsite.s3_storage_class == "STANDARD_IA" and offsite.encryption
    for key, value in [
        ("TARGETS", '["ftp"]'),
        ("TARGETS", '["s3", "s3"]'),
        ("TARGETS", "[]"),
        ("RSYNC_REMOTE_DIR", "/etc"),
        ("RSYNC_REMOTE_DIR", "relative"),
        ("S3_BUCKET", "Bad_Bucket"),
        ("S3_PREFIX", "/lead"),
        ("S3_PREFIX", "a//b"),
        ("S3_SSE", "rot13"),
        ("S3_SSE_KMS_KEY_ID", "alias/x"),
        ("S3_MULTIPART_CHUNK_MIB", "1"),
        ("ENCRYPTION_KEY", "file:/etc/key"),
        ("RSYNC_PATH", "rsync; rm"),
        ("WORK_DIR", "/tmp"),
    ]:
        with pytest.raises(ConfigError, match=f"offsite.{key.lower()}"):
            load_config(environ={f"DBOPS_OFFSITE__{key}": value})
