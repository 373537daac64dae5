"""The rsync-over-SSH target.

Remote layout under ``remote_dir``: the local repository's (``<store>/[<subject>/]<id>/``),
plus ``<series>/.staging/<id>/`` while a backup is being copied and ``<series>/.deleting/``
while one is removed.

* SSH: key written to a 0600 file in a private temporary folder for the duration of the
  ``with`` block and removed afterwards; host key checked (``StrictHostKeyChecking=yes``)
  against a known_hosts file generated from the connection's ``host_key``; no password,
  no agent, no user ssh config (``-F /dev/null``), ``BatchMode``.
* Copy: ``rsync -rtp --partial-dir=.rsync-partial`` into the deterministic staging name,
  so an interrupted copy resumes (rsync sends only what the partial file lacks); times
  are kept so a rerun's quick check skips finished files.
* Arrival check before publication: a remote listing (sizes) and ``sha256sum`` of every
  stored file and of ``manifest.json``; only then ``offsite.json`` is written and the
  folder renamed into place with one ``mv``.

Remote commands are POSIX ``sh`` with GNU ``find -printf`` and ``sha256sum -z``
(Debian/Ubuntu/RHEL coreutils and findutils); every path is shell-quoted, and every
name in it was validated (store, subject, backup id) or comes from the manifest.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import posixpath
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from dbops.backup.repository import MANIFEST_NAME, Backup, utc_now
from dbops.config import checked_backup_root
from dbops.offsite.common import (
    DELETING_DIR,
    ENCRYPTED_SUFFIX,
    ENVELOPE_NAME,
    STAGING_DIR,
    Catalog,
    Envelope,
    LogFn,
    OffsiteBackup,
    OffsiteError,
    OffsiteVerificationError,
    SeriesKey,
    StagingEntry,
    StoredFile,
    TransferStats,
    catalog_from_mirror,
    check_rel,
    plain_files,
    split_backup_path,
    split_staging_path,
)
from dbops.offsite.crypto import Encryption, file_context
from dbops.tools import find_tool, human_bytes, run_tool, write_secret_file

PARTIAL_DIR = ".rsync-partial"
HOST_KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)  # fmt: skip
_HOST_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:-]*$")
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_STATS = {
    "Number of regular files transferred": "files_transferred",
    "Literal data": "literal_bytes",
    "Matched data": "matched_bytes",
    "Total bytes sent": "bytes_sent",
    "Total bytes received": "bytes_received",
}
_STATS_RE = re.compile(r"^(" + "|".join(map(re.escape, _STATS)) + r"):\s*([\d,.]+)", re.M)


def check_remote_dir(path: str) -> str:
    """An absolute remote folder of plain characters, not a system folder (normalised)."""
    if not isinstance(path, str) or not re.match(r"^/[A-Za-z0-9._/+-]*$", path):
        raise ValueError(f"remote folder {path!r} must be an absolute path of letters, digits and ._/+-")
    if ".." in path.split("/"):
        raise ValueError(f"remote folder {path!r} must not contain '..'")
    return str(checked_backup_root(Path(path)))


def parse_rsync_stats(text: str) -> TransferStats:
    """The numbers of ``rsync --stats`` (with or without thousands separators)."""
    stats = TransferStats()
    for name, value in _STATS_RE.findall(text):
        setattr(stats, _STATS[name], int(value.replace(",", "").replace(".", "")))
    return stats


# --------------------------------------------------------------------------- SSH


@dataclass(frozen=True)
class SSHParams:
    """How to reach the offsite host (from the ``dbops_offsite_ssh`` connection)."""

    host: str
    user: str
    port: int = 22
    private_key: str | None = field(default=None, repr=False)
    key_file: str | None = None
    # "ssh-ed25519 AAAA..." (a trailing comment is ignored); None: the worker's known_hosts
    host_key: str | None = None
    # only honoured without a host_key; logged loudly
    no_host_key_check: bool = False
    connect_timeout: int = 15

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not _HOST_RE.match(self.host):
            raise ValueError(f"offsite SSH host {self.host!r} is not a plain host name or address")
        if not isinstance(self.user, str) or not _USER_RE.match(self.user):
            raise ValueError(f"offsite SSH user {self.user!r} is not a plain user name")
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ValueError(f"offsite SSH port {self.port!r} is not a port number")
        if bool(self.private_key) == bool(self.key_file):
            raise ValueError("the offsite SSH connection needs exactly one of private_key (extra) or key_file")
        if self.host_key is not None:
            parts = self.host_key.split()
            if len(parts) < 2 or parts[0] not in HOST_KEY_TYPES:
                raise ValueError(
                    f"offsite SSH host_key must be '<type> <base64>' with a type among {', '.join(HOST_KEY_TYPES)}"
                )
            try:
                base64.b64decode(parts[1], validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("offsite SSH host_key data is not base64") from None
            if self.no_host_key_check:
                raise ValueError("the offsite SSH connection gives a host_key and no_host_key_check: pick one")

    def known_hosts_line(self) -> str:
        assert self.host_key is not None
        key_type, data = self.host_key.split()[:2]
        pattern = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{pattern} {key_type} {data}\n"


class SSHSession:
    """A private folder with the key and known_hosts for one task; removed on exit."""

    def __init__(self, params: SSHParams) -> None:
        self.params = params
        self.dir: Path | None = None
        self._argv: list[str] = []

    def __enter__(self) -> SSHSession:
        p = self.params
        find_tool("ssh")
        self.dir = Path(tempfile.mkdtemp(prefix="dbops-ssh-"))  # 0700
        try:
            if p.private_key:
                key = write_secret_file(self.dir / "id_key", p.private_key.strip() + "\n")
            else:
                key = Path(p.key_file)  # type: ignore[arg-type]
            options = {
                "IdentitiesOnly": "yes",
                "BatchMode": "yes",
                "PasswordAuthentication": "no",
                "KbdInteractiveAuthentication": "no",
                "ForwardAgent": "no",
                "ConnectTimeout": str(p.connect_timeout),
                "ServerAliveInterval": "15",
                "ServerAliveCountMax": "4",
                # one TCP+SSH handshake for all of this task's ssh and rsync calls; the
                # socket lives in the private folder, the master ends on close()
                "ControlMaster": "auto",
                "ControlPath": str(self.dir / "cm"),
                "ControlPersist": "120",
            }
            if p.host_key:
                known = self.dir / "known_hosts"
                write_secret_file(known, p.known_hosts_line())
                options |= {"StrictHostKeyChecking": "yes", "UserKnownHostsFile": str(known),
                            "GlobalKnownHostsFile": "/dev/null"}  # fmt: skip
            elif p.no_host_key_check:
                options |= {"StrictHostKeyChecking": "no", "UserKnownHostsFile": "/dev/null"}
            else:
                options |= {"StrictHostKeyChecking": "yes"}  # the worker's own known_hosts
            self._argv = ["ssh", "-F", "/dev/null", "-i", str(key), "-p", str(p.port)]
            for name, value in options.items():
                self._argv += ["-o", f"{name}={value}"]
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.dir is not None:
            if (self.dir / "cm").exists():  # stop the multiplexing master before its key goes
                subprocess.run([*self._argv, "-O", "exit", self.destination], capture_output=True, timeout=30,
                               stdin=subprocess.DEVNULL, check=False)  # fmt: skip
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def host_key_mode(self) -> str:
        if self.params.host_key:
            return "host key pinned from the connection"
        if self.params.no_host_key_check:
            return "HOST KEY NOT CHECKED (no_host_key_check on the connection)"
        return "host key from the worker's known_hosts"

    @property
    def destination(self) -> str:
        return f"{self.params.user}@{self.params.host}"

    def ssh_argv(self) -> list[str]:
        if self.dir is None:
            raise OffsiteError("the SSH session is not open (use it in a with block)")
        return list(self._argv)

    def rsh(self) -> str:
        """``ssh ...`` for rsync's ``-e`` (quoted for rsync's own splitting)."""
        return shlex.join(self.ssh_argv())

    def temp_file(self, name: str, data: bytes) -> Path:
        assert self.dir is not None
        path = self.dir / f"{name}.{secrets.token_hex(4)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return path

    def run(self, script: str, *, log: LogFn, stdin: bytes | None = None, timeout: float | None = None) -> str:
        """Run a POSIX sh ``script`` on the host; its stdout. ToolError on failure."""
        argv = [*self.ssh_argv(), self.destination, "sh -c " + shlex.quote(script)]
        stdin_path = self.temp_file("stdin", stdin) if stdin is not None else None
        try:
            return run_tool(argv, log=log, stdin_path=stdin_path, timeout=timeout)
        finally:
            if stdin_path is not None:
                stdin_path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the target


def _q(value: str) -> str:
    return shlex.quote(value)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain_names(names) -> list[str]:
    names = list(names)
    for name in names:
        check_rel(name)
        if "/" in name:
            raise OffsiteError(f"refusing the offsite file name {name!r}: not a plain name")
    return list(names)


@dataclass
class FolderState:
    sizes: dict[str, int]
    hashes: dict[str, str]


class RsyncTarget:
    """Backups over rsync+SSH to ``remote_dir`` on the host of ``ssh``. Use as a context
    manager: the key file exists only inside the ``with`` block."""

    name = "rsync"

    def __init__(
        self,
        ssh: SSHParams,
        remote_dir: str,
        *,
        rsync_path: str = "rsync",
        bwlimit_kib: int | None = None,
        io_timeout_s: int = 600,
        compress: bool = False,
        work_dir: Path | None = None,
    ) -> None:
        self.ssh = ssh
        self.root = check_remote_dir(remote_dir)
        if not re.match(r"^[A-Za-z0-9._/+-]+$", rsync_path):
            raise ValueError(f"rsync_path {rsync_path!r} must be a plain command or path")
        self.rsync_path = rsync_path
        self.bwlimit_kib = bwlimit_kib
        self.io_timeout_s = io_timeout_s
        self.compress = compress
        self.work_dir = work_dir
        self._session: SSHSession | None = None

    def __enter__(self) -> RsyncTarget:
        find_tool("rsync")
        self._session = SSHSession(self.ssh).__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    @property
    def session(self) -> SSHSession:
        if self._session is None:
            raise OffsiteError("the rsync target is not open (use it in a with block)")
        return self._session

    def location(self) -> str:
        return f"{self.ssh.user}@{self.ssh.host}:{self.ssh.port}:{self.root}"

    def describe(self) -> str:
        return f"rsync over SSH to {self.location()} ({self.session.host_key_mode()})"

    # ---------------------------------------------------------------- paths

    def series_dir(self, key: SeriesKey) -> str:
        return posixpath.join(self.root, *key.parts)

    def backup_dir(self, key: SeriesKey, backup_id: str) -> str:
        return posixpath.join(self.series_dir(key), backup_id)

    def staging_dir(self, key: SeriesKey, backup_id: str) -> str:
        return posixpath.join(self.series_dir(key), STAGING_DIR, backup_id)

    def _remote(self, path: str) -> str:
        return f"{self.session.destination}:{path}"

    # ---------------------------------------------------------------- rsync

    def _rsync(self, args: list[str], log: LogFn) -> TransferStats:
        argv = ["rsync", "--stats", "--no-human-readable", "-e", self.session.rsh(),
                f"--rsync-path={self.rsync_path}", f"--timeout={self.io_timeout_s}"]  # fmt: skip
        if self.bwlimit_kib:
            argv.append(f"--bwlimit={self.bwlimit_kib}")
        if self.compress:
            argv.append("--compress")
        started = datetime.now(timezone.utc)
        out = run_tool([*argv, *args], log=log)
        stats = parse_rsync_stats(out)
        stats.seconds = round((datetime.now(timezone.utc) - started).total_seconds(), 3)
        return stats

    # ---------------------------------------------------------------- catalog

    def catalog(self, log: LogFn) -> Catalog:
        """Every backup folder's file sizes (one remote ``find``), and the complete
        backups, judged from their manifests and envelopes mirrored by rsync. Read-only:
        a target root that does not exist yet is an empty catalog."""
        script = (
            f"test -d {_q(self.root)} || exit 0; cd -- {_q(self.root)} && "
            f"find . -name {DELETING_DIR} -prune -o -path '*/{STAGING_DIR}/*' -prune -printf 'S %T@ %P\\0' "
            "-o -type f -printf 'F %s %P\\0'"
        )
        out = self.session.run(script, log=log)
        catalog = Catalog()
        wanted: list[str] = []
        for record in out.split("\0"):
            if not record:
                continue
            kind, number, rel = (record.split(" ", 2) + ["", ""])[:3]
            if kind == "F":
                found = split_backup_path(rel)
                if found is None:
                    continue
                key, backup_id, inner = found
                catalog.sizes.setdefault((key, backup_id), {})[inner] = int(number)
                if inner in (MANIFEST_NAME, ENVELOPE_NAME):
                    wanted.append(rel)
            elif kind == "S":
                staged = split_staging_path(rel)
                if staged is not None:
                    modified = datetime.fromtimestamp(float(number), timezone.utc)
                    catalog.staging.append(StagingEntry(staged[0], staged[1], modified))
        if wanted:
            with tempfile.TemporaryDirectory(prefix="dbops-offsite-catalog-") as tmp:
                mirror = Path(tmp) / "mirror"
                mirror.mkdir(mode=0o700)
                listing = self.session.temp_file("catalog", "\0".join(wanted).encode() + b"\0")
                try:
                    stats = self._rsync(
                        ["-rt", f"--files-from={listing}", "--from0", self._remote(self.root + "/"), f"{mirror}/"], log
                    )
                finally:
                    listing.unlink(missing_ok=True)
                catalog.wire_bytes = stats.bytes_received + stats.bytes_sent
                catalog.backups = catalog_from_mirror(mirror)
        log(f"rsync catalog of {self.location()}: {catalog.count()} complete backups, "
            f"{len(catalog.staging)} staging entries")  # fmt: skip
        return catalog

    # ---------------------------------------------------------------- shipping

    def _outbox(self, backup: Backup, encryption: Encryption, log: LogFn) -> tuple[Path, list[StoredFile]]:
        """The backup encrypted into ``work_dir`` (deterministic bytes, source mtimes)."""
        if self.work_dir is None:
            raise OffsiteError("encryption over rsync needs a work_dir for the encrypted copy")
        key = SeriesKey.of(backup)
        outbox = self.work_dir.joinpath(*key.parts, backup.backup_id)
        outbox.mkdir(parents=True, exist_ok=True, mode=0o700)
        files = []
        for entry in backup.manifest["files"]:
            src = backup.path / entry["path"]
            stored_path = entry["path"] + ENCRYPTED_SUFFIX
            dst = outbox / stored_path
            dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            context = file_context(key.store, key.subject, backup.backup_id, entry["path"], entry["sha256"])
            size, digest = encryption.encrypt_file(src, dst, context)
            if size != encryption.stored_size(entry["bytes"]):
                raise OffsiteError(f"{src} changed while it was encrypted ({size} bytes out)")
            st = os.stat(src)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            files.append(StoredFile(entry["path"], stored_path, size, digest, entry["bytes"], entry["sha256"]))
        shutil.copy2(backup.path / MANIFEST_NAME, outbox / MANIFEST_NAME)
        log(f"encrypted {len(files)} files of {key}/{backup.backup_id} into {outbox} ({encryption!r})")
        return outbox, files

    def ship(self, backup: Backup, encryption: Encryption | None, log: LogFn) -> tuple[Envelope, TransferStats]:
        key = SeriesKey.of(backup)
        where = f"{key}/{backup.backup_id}"
        outbox = None
        if encryption is not None:
            outbox, files = self._outbox(backup, encryption, log)
            source = outbox
        else:
            source, files = backup.path, plain_files(backup.manifest)
        envelope = Envelope(
            manifest_sha256=str(backup.manifest["manifest_sha256"]),
            files=tuple(files),
            encryption=encryption.describe() if encryption else None,
            target=self.name,
            shipped_at=utc_now(),
        )
        staging = self.staging_dir(key, backup.backup_id)
        names = [f.stored_path for f in files] + [MANIFEST_NAME]
        self.session.run(f"umask 077 && mkdir -p -- {_q(staging)}", log=log)
        listing = self.session.temp_file("files", "\0".join(names).encode() + b"\0")
        try:
            stats = self._rsync(
                ["-rtp", "--chmod=D700,F600", f"--partial-dir={PARTIAL_DIR}", f"--files-from={listing}",
                 "--from0", f"{source}/", self._remote(staging + "/")],
                log,
            )  # fmt: skip
        finally:
            listing.unlink(missing_ok=True)
        log(f"rsync {where}: {stats.files_transferred} files, {human_bytes(stats.literal_bytes)} sent as data, "
            f"{human_bytes(stats.matched_bytes)} already there, {human_bytes(stats.bytes_sent)} on the wire")  # fmt: skip

        # the arrival check, in the staging folder: nothing is published unless it passes
        manifest_sha = _sha256_of(backup.path / MANIFEST_NAME)
        state = self._folder_state(staging, names, log)
        problems, extras = _compare(state, files, manifest_sha, allow=(PARTIAL_DIR + "/",))
        if problems:
            bad = [f.stored_path for f in files if any(p.startswith(f.stored_path + ":") for p in problems)]
            if bad:  # so the rerun sends them again instead of trusting size+mtime
                self.session.run(f"cd -- {_q(staging)} && rm -f -- {' '.join(map(_q, bad))}", log=log)
            raise OffsiteVerificationError(f"rsync arrival check of {where} failed, not published", problems)

        series = self.series_dir(key)
        bid = backup.backup_id
        stage_rel = f"{STAGING_DIR}/{bid}"
        remove = " ".join(_q(f"{stage_rel}/{x}") for x in [PARTIAL_DIR, *extras])
        publish = (
            f"set -e; umask 077; cd -- {_q(series)}; "
            f"if [ -e {_q(bid)} ]; then echo 'backup {bid} already exists offsite, not replacing it' >&2; exit 3; fi; "
            f"rm -rf -- {remove}; "
            f"cat > {_q(stage_rel + '/.' + ENVELOPE_NAME + '.tmp')}; "
            f"mv -f -- {_q(stage_rel + '/.' + ENVELOPE_NAME + '.tmp')} {_q(stage_rel + '/' + ENVELOPE_NAME)}; "
            f"mv -- {_q(stage_rel)} {_q(bid)}"
        )
        self.session.run(publish, log=log, stdin=envelope.to_bytes())
        log(f"published {where} at {self.backup_dir(key, bid)} (sizes and sha256 of {len(files)} files checked)")
        if outbox is not None:
            shutil.rmtree(outbox, ignore_errors=True)
            for parent in outbox.parents:  # the empty series folders of the outbox
                if parent == self.work_dir or not str(parent).startswith(str(self.work_dir)):
                    break
                try:
                    parent.rmdir()
                except OSError:
                    break
        return envelope, stats

    # ---------------------------------------------------------------- checks

    def _folder_state(self, folder: str, names: list[str], log: LogFn) -> FolderState:
        """Sizes of every file under ``folder`` and sha256 of ``names`` (one ssh call)."""
        script = (
            f"cd -- {_q(folder)} && find . -type f -printf '%s %P\\0' && printf 'HASHES\\0' && "
            f"{{ sha256sum -z -- {' '.join(map(_q, names))} 2>/dev/null || true; }}"
        )
        out = self.session.run(script, log=log)
        sizes_part, _, hashes_part = out.partition("HASHES\0")
        sizes = {}
        for record in sizes_part.split("\0"):
            if record:
                size, _, rel = record.partition(" ")
                sizes[rel] = int(size)
        hashes = {}
        for record in hashes_part.split("\0"):
            if record:
                digest, _, rest = record.partition(" ")
                hashes[rest[1:]] = digest  # "<hash>  name" (text mode) or "<hash> *name"
        return FolderState(sizes, hashes)

    def verify_content(
        self, item: OffsiteBackup, *, deep: bool, encryption: Encryption | None, log: LogFn
    ) -> list[str]:
        """sha256 of every stored file (and the manifest) on the host, against the envelope."""
        assert item.envelope is not None
        folder = self.backup_dir(item.key, item.backup_id)
        names = [f.stored_path for f in item.envelope.files]
        state = self._folder_state(folder, names, log)
        problems, extras = _compare(state, item.envelope.files, None, allow=())
        return problems + [f"{x}: not part of the backup" for x in extras]

    # ---------------------------------------------------------------- removal

    def delete(self, key: SeriesKey, backup_id: str, log: LogFn) -> None:
        """Rename out of sight first (it stops looking complete), then remove."""
        gone = f"{DELETING_DIR}/{backup_id}.{secrets.token_hex(6)}"
        script = (
            f"set -e; umask 077; cd -- {_q(self.series_dir(key))}; "
            f"if [ ! -d {_q(backup_id)} ]; then exit 0; fi; "
            f"mkdir -p {DELETING_DIR}; mv -- {_q(backup_id)} {_q(gone)}; rm -rf -- {_q(gone)}"
        )
        self.session.run(script, log=log)

    def remove_incomplete(self, entry: StagingEntry, log: LogFn) -> None:
        if "/" in entry.name or entry.name in ("", ".", ".."):
            raise OffsiteError(f"refusing to remove staging entry {entry.name!r}")
        path = posixpath.join(self.series_dir(entry.key), STAGING_DIR, entry.name)
        self.session.run(f"rm -rf -- {_q(path)}", log=log)

    def housekeeping(self, older_than: timedelta, now: datetime, log: LogFn) -> list[str]:
        """Remove ``.deleting`` leftovers of an interrupted deletion (never complete-looking)."""
        script = (
            f"cd -- {_q(self.root)} 2>/dev/null || exit 0; "
            f"find . -mindepth 2 -maxdepth 3 -type d -name {DELETING_DIR} -prune -printf '%P\\0' "
            f"-exec rm -rf -- {{}} +"
        )
        out = self.session.run(script, log=log)
        return [r for r in out.split("\0") if r]

    # ---------------------------------------------------------------- plain files (FileTarget)
    # for the WAL archive: rsync into the folder, sha256sum on the host as the arrival
    # check, small files replaced by one mv (readers see the old or the new file)

    def _path(self, rel: str) -> str:
        return posixpath.join(self.root, check_rel(rel))

    def list_files(self, folder: str, log: LogFn) -> dict[str, int]:
        path = self._path(folder)
        out = self.session.run(
            f"test -d {_q(path)} || exit 0; cd -- {_q(path)} && find . -mindepth 1 -maxdepth 1 -type f -printf '%s %P\\0'",
            log=log,
        )
        sizes = {}
        for record in out.split("\0"):
            if record:
                size, _, name = record.partition(" ")
                sizes[name] = int(size)
        return sizes

    def put_files(self, folder: str, source_dir: Path, files, key_id, log: LogFn) -> TransferStats:
        names = _plain_names(f.stored_path for f in files)
        if not names:
            return TransferStats()
        path = self._path(folder)
        self.session.run(f"umask 077 && mkdir -p -- {_q(path)}", log=log)
        listing = self.session.temp_file("files", "\0".join(names).encode() + b"\0")
        try:
            return self._rsync(
                ["-rtp", "--chmod=D700,F600", f"--partial-dir={PARTIAL_DIR}", f"--files-from={listing}",
                 "--from0", f"{source_dir}/", self._remote(path + "/")],
                log,
            )  # fmt: skip
        finally:
            listing.unlink(missing_ok=True)

    def check_files(self, folder: str, files, key_id, *, deep: bool, log: LogFn) -> list[str]:
        """Size and sha256 of every file, computed on the host (``deep`` changes nothing:
        the host always reads the bytes)."""
        names = _plain_names(f.stored_path for f in files)
        if not names:
            return []
        path = self._path(folder)
        problems = []
        sizes: dict[str, int] = {}
        hashes: dict[str, str] = {}
        for start in range(0, len(names), 500):  # bounded command lines
            batch = names[start : start + 500]
            state = self._folder_state(path, batch, log) if self._exists(path, log) else FolderState({}, {})
            sizes.update({k: v for k, v in state.sizes.items() if k in batch})
            hashes.update(state.hashes)
        for f in files:
            size = sizes.get(f.stored_path)
            if size is None:
                problems.append(f"{f.stored_path}: missing")
            elif size != f.bytes:
                problems.append(f"{f.stored_path}: {size} bytes, expected {f.bytes}")
            elif hashes.get(f.stored_path) != f.sha256:
                problems.append(f"{f.stored_path}: sha256 {hashes.get(f.stored_path)}, expected {f.sha256}")
        return problems

    def _exists(self, path: str, log: LogFn) -> bool:
        return self.session.run(f"test -d {_q(path)} && echo yes || true", log=log).strip() == "yes"

    def read_file(self, rel: str, log: LogFn) -> bytes | None:
        path = self._path(rel)
        out = self.session.run(f"if [ -f {_q(path)} ]; then printf Y; cat -- {_q(path)}; else printf N; fi", log=log)
        return out[1:].encode() if out.startswith("Y") else None

    def write_file(self, rel: str, data: bytes, log: LogFn) -> None:
        path = self._path(rel)
        folder, name = posixpath.split(path)
        tmp = posixpath.join(folder, f".{name}.tmp-{secrets.token_hex(4)}")
        self.session.run(
            f"set -e; umask 077; mkdir -p -- {_q(folder)}; cat > {_q(tmp)}; mv -f -- {_q(tmp)} {_q(path)}",
            log=log, stdin=data,
        )  # fmt: skip

    def delete_files(self, folder: str, names, log: LogFn) -> None:
        names = _plain_names(names)
        if names:  # names on stdin: no command line limit, and never parsed by the shell
            self.session.run(f"cd -- {_q(self._path(folder))} 2>/dev/null || exit 0; xargs -0 -r rm -f --",
                             log=log, stdin="\0".join(names).encode() + b"\0")  # fmt: skip

    # ---------------------------------------------------------------- restore

    def download(self, key: SeriesKey, backup_id: str, dest: Path, log: LogFn) -> TransferStats:
        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self._rsync(
            ["-rtp", "--chmod=D700,F600", f"--partial-dir={PARTIAL_DIR}",
             self._remote(self.backup_dir(key, backup_id) + "/"), f"{dest}/"],
            log,
        )  # fmt: skip


def _compare(
    state: FolderState, files: tuple[StoredFile, ...] | list[StoredFile], manifest_sha: str | None,
    *, allow: tuple[str, ...],
) -> tuple[list[str], list[str]]:
    """(problems, extra files) of a remote folder against the stored files it should hold.

    Problems start with ``<stored path>:`` so the caller can tell which files were bad.
    """
    problems = []
    expected = {f.stored_path for f in files} | {MANIFEST_NAME, ENVELOPE_NAME}
    for f in files:
        size = state.sizes.get(f.stored_path)
        if size is None:
            problems.append(f"{f.stored_path}: missing")
        elif size != f.bytes:
            problems.append(f"{f.stored_path}: {size} bytes, expected {f.bytes}")
        elif f.sha256 is not None and state.hashes.get(f.stored_path) != f.sha256:
            problems.append(f"{f.stored_path}: sha256 {state.hashes.get(f.stored_path)}, expected {f.sha256}")
    if MANIFEST_NAME not in state.sizes:
        problems.append(f"{MANIFEST_NAME}: missing")
    elif manifest_sha is not None and state.hashes.get(MANIFEST_NAME) != manifest_sha:
        problems.append(f"{MANIFEST_NAME}: sha256 differs from the local manifest")
    extras = sorted(r for r in state.sizes if r not in expected and not r.startswith(allow))
    return problems, extras
