"""The offsite host's script (``include/scripts/offsite_remote.sh``), run here by bash exactly as
the host runs it: the command line ``ssh`` sends, with the script as ``bash -c``'s argument.
The integration tests run the same commands over SSH; these check the refusals and the
file operations without a server."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from dbops.offsite.common import DELETING_DIR, ENVELOPE_NAME, STAGING_DIR
from dbops.offsite.rsync import PARTIAL_DIR, REMOTE_SCRIPT, SSHParams, SSHSession


def remote(command: str, *args: str, stdin: bytes = b"", check: bool = True) -> subprocess.CompletedProcess:
    """What the host runs for ``SSHSession.run(command, *args)``: the last ssh argument, a shell line."""
    with SSHSession(SSHParams(host="h", user="u", private_key="K")) as session:
        line = session.remote_argv(command, *args)[-1]
    return subprocess.run(["sh", "-c", line], input=stdin, capture_output=True, check=check)


def test_the_script_names_match_the_package():
    text = REMOTE_SCRIPT.read_text(encoding="utf-8")
    names = dict(re.findall(r"^([A-Z_]+)=(\S+)$", text, re.M))
    wanted = {"STAGING_DIR": STAGING_DIR, "DELETING_DIR": DELETING_DIR, "PARTIAL_DIR": PARTIAL_DIR}
    assert names == {**wanted, "ENVELOPE_NAME": ENVELOPE_NAME}
    assert "set -euo pipefail" in text


def test_arguments_reach_the_script_quoted(tmp_path):
    """A name the shell would expand or split arrives as it is (the caller validates names;
    the quoting must not depend on that)."""
    odd = tmp_path / "a b;$(touch pwned)"
    remote("write-file", str(odd), "t1", stdin=b"data")
    assert odd.read_bytes() == b"data" and not Path("pwned").exists() and not (tmp_path / "pwned").exists()


def test_bad_calls_are_refused_naming_the_problem(tmp_path):
    cases = [
        (("frobnicate",), "unknown command 'frobnicate'"),
        (("catalog",), "catalog: wrong number of arguments (0)"),
        (("write-file", str(tmp_path / "x")), "write-file: wrong number of arguments (1)"),
        (("catalog", "relative/path"), "not an absolute path"),
        (("remove", f"{tmp_path}/../etc"), "not an absolute path without '..'"),
        (("delete", str(tmp_path), "a/b", "t"), "not a plain name: 'a/b'"),
        (("publish", str(tmp_path / "root"), "/elsewhere/s", "b1"), "is not under"),
    ]
    for args, message in cases:
        proc = remote(*args, check=False)
        assert proc.returncode == 2 and message in proc.stderr.decode(), (args, proc.stderr)


def test_file_commands_on_a_folder(tmp_path):
    folder = tmp_path / "wal"
    assert remote("exists", str(folder)).stdout == b""
    assert remote("list-files", str(folder)).stdout == b""  # no folder: nothing, no error
    assert remote("read-file", str(folder / "catalog.json")).stdout == b"N"
    remote("mkdir", str(folder))
    assert remote("exists", str(folder)).stdout == b"yes\n" and folder.stat().st_mode & 0o777 == 0o700
    remote("write-file", str(folder / "catalog.json"), "t2", stdin=b"\x00{binary}\n")
    assert remote("read-file", str(folder / "catalog.json")).stdout == b"Y\x00{binary}\n"
    (folder / "000000010000000000000001").write_bytes(b"w" * 7)
    listed = remote("list-files", str(folder)).stdout.split(b"\0")
    assert sorted(x for x in listed if x) == [b"10 catalog.json", b"7 000000010000000000000001"]
    remote("sync-files", str(folder), stdin=b"000000010000000000000001\0catalog.json\0")
    remote("delete-files", str(folder), stdin=b"000000010000000000000001\0not-there\0")
    assert sorted(p.name for p in folder.iterdir()) == ["catalog.json"]
    remote("delete-files", str(tmp_path / "missing"), stdin=b"x\0")  # no folder: nothing to delete
    assert not list(folder.glob(".*.tmp-*"))


def test_folder_state_lists_sizes_then_hashes(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.dat").write_bytes(b"abc")
    (tmp_path / "sub" / "b.dat").write_bytes(b"")
    out = remote("folder-state", str(tmp_path), "a.dat", "missing.dat").stdout
    sizes, _, hashes = out.partition(b"HASHES\0")
    assert sorted(x for x in sizes.split(b"\0") if x) == [b"0 sub/b.dat", b"3 a.dat"]
    assert hashes == b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  a.dat\0"


def test_delete_and_housekeeping(tmp_path):
    series = tmp_path / "postgres" / "db"
    (series / "20240101T000000Z").mkdir(parents=True)
    (series / "20240101T000000Z" / "toc.dat").write_bytes(b"x")
    (series / DELETING_DIR / "old.abc").mkdir(parents=True)  # an interrupted deletion
    remote("delete", str(series), "20240101T000000Z", "tok")
    remote("delete", str(series), "20240101T000000Z", "tok")  # gone already: nothing to do
    assert not (series / "20240101T000000Z").exists()
    out = remote("housekeeping", str(tmp_path)).stdout
    assert out == f"postgres/db/{DELETING_DIR}\0".encode() and not (series / DELETING_DIR).exists()
    assert remote("housekeeping", str(tmp_path / "none")).stdout == b""


def test_catalog_lists_files_and_staging_entries(tmp_path):
    series = tmp_path / "redis"
    (series / "20240101T000000Z").mkdir(parents=True)
    (series / "20240101T000000Z" / "manifest.json").write_bytes(b"{}")
    (series / STAGING_DIR / "20240102T000000Z").mkdir(parents=True)
    (series / DELETING_DIR / "x.1").mkdir(parents=True)
    (series / DELETING_DIR / "x.1" / "f").write_bytes(b"gone")
    records = [r for r in remote("catalog", str(tmp_path)).stdout.decode().split("\0") if r]
    assert "F 2 redis/20240101T000000Z/manifest.json" in records
    staging = [r for r in records if r.startswith("S ")]
    assert len(staging) == 1 and staging[0].endswith(f" redis/{STAGING_DIR}/20240102T000000Z")
    assert not any(DELETING_DIR in r for r in records)
    assert remote("catalog", str(tmp_path / "not-yet")).stdout == b""


@pytest.mark.parametrize("command", ["catalog", "publish"])
def test_the_command_line_is_bash_c_with_the_script(command):
    with SSHSession(SSHParams(host="h", user="u", private_key="K")) as session:
        argv = session.remote_argv(command, "/srv/x", "b c")
    assert argv[-2] == "u@h"
    words = shlex.split(argv[-1])
    assert words[:2] == ["bash", "-c"] and words[2] == REMOTE_SCRIPT.read_text(encoding="utf-8")
    assert words[3:] == ["offsite_remote", command, "/srv/x", "b c"]
