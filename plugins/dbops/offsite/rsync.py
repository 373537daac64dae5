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
* Durable publication: every staged file and folder is flushed to disk (``sync FILE...``)
  before the rename, and the folders holding the backup after it, so a power loss on the
  host never leaves a complete-looking backup whose files were still in its page cache.
* Encrypted copies are prepared in ``work_dir`` (the outbox), removed after the ship
  whether it succeeded or failed (the bytes are deterministic: a rerun encrypts them
  again and rsync resumes on the host's partial file).
* Download (restore) is resumable: called again into the same folder, it fetches only
  what is missing or differs (``--checksum`` against what is already there, partial
  files kept in ``.rsync-partial``).

Remote commands are the subcommands of ``include/scripts/offsite_remote.sh``, sent as the
script of ``bash -c`` with shell-quoted arguments (stdin stays free for data). It needs bash,
GNU ``find -printf``, ``sha256sum -z`` and ``sync FILE...`` (Debian/Ubuntu/RHEL coreutils >= 8.24
and findutils; an older ``sync`` ignores its arguments and flushes everything, which is durable
too); every name passed was validated (store, subject, backup id) or comes from the manifest.
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
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from dbops.backup.repository import MANIFEST_NAME, Backup, utc_now
from dbops.config import checked_backup_root
from dbops.offsite.common import (
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
from dbops.offsite.crypto import DecryptionError, Encryption, file_context
from dbops.sqlfiles import SCRIPTS_DIR
from dbops.tools import find_tool, human_bytes, run_tool, write_secret_file

PARTIAL_DIR = ".rsync-partial"
REMOTE_SCRIPT = SCRIPTS_DIR / "offsite_remote.sh"
HOST_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
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
                options |= {
                    "StrictHostKeyChecking": "yes",
                    "UserKnownHostsFile": str(known),
                    "GlobalKnownHostsFile": "/dev/null",
                }
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
                subprocess.run(
                    [*self._argv, "-O", "exit", self.destination],
                    capture_output=True,
                    timeout=30,
                    stdin=subprocess.DEVNULL,
                    check=False,
                )
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

    def remote_argv(self, command: str, *args: str) -> list[str]:
        """``ssh ...`` running ``command`` of the offsite script on the host, with ``args``."""
        remote = ["bash", "-c", _remote_script(), "offsite_remote", command, *args]
        # ssh joins its arguments into one line for the login shell: quote each one
        return [*self.ssh_argv(), self.destination, shlex.join(remote)]

    def run(
        self, command: str, *args: str, log: LogFn, stdin: bytes | None = None, timeout: float | None = None
    ) -> str:
        """Run ``command`` of the offsite script on the host; its stdout. ToolError on failure."""
        argv = self.remote_argv(command, *args)
        stdin_path = self.temp_file("stdin", stdin) if stdin is not None else None
        try:
            return run_tool(argv, log=log, stdin_path=stdin_path, timeout=timeout)
        finally:
            if stdin_path is not None:
                stdin_path.unlink(missing_ok=True)


@cache
def _remote_script() -> str:
    return REMOTE_SCRIPT.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the target


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
        argv = [
            "rsync",
            "--stats",
            "--no-human-readable",
            "-e",
            self.session.rsh(),
            f"--rsync-path={self.rsync_path}",
            f"--timeout={self.io_timeout_s}",
        ]
        if self.bwlimit_kib:
            argv.append(f"--bwlimit={self.bwlimit_kib}")
        if self.compress:
            argv.append("--compress")
        started = datetime.now(UTC)
        out = run_tool([*argv, *args], log=log)
        stats = parse_rsync_stats(out)
        stats.seconds = round((datetime.now(UTC) - started).total_seconds(), 3)
        return stats

    # ---------------------------------------------------------------- catalog

    def catalog(self, log: LogFn) -> Catalog:
        """Every backup folder's file sizes (one remote ``find``), and the complete
        backups, judged from their manifests and envelopes mirrored by rsync. Read-only:
        a target root that does not exist yet is an empty catalog."""
        out = self.session.run("catalog", self.root, log=log)
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
                    modified = datetime.fromtimestamp(float(number), UTC)
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
        log(
            f"rsync catalog of {self.location()}: {catalog.count()} complete backups, "
            f"{len(catalog.staging)} staging entries"
        )
        return catalog

    # ---------------------------------------------------------------- shipping

    def _outbox_path(self, backup: Backup) -> Path:
        if self.work_dir is None:
            raise OffsiteError("encryption over rsync needs a work_dir for the encrypted copy")
        return self.work_dir.joinpath(*SeriesKey.of(backup).parts, backup.backup_id)

    def _outbox(
        self, backup: Backup, encryption: Encryption, outbox: Path, manifest: bytes, log: LogFn
    ) -> list[StoredFile]:
        """The backup encrypted into ``outbox`` (deterministic bytes, source mtimes)."""
        key = SeriesKey.of(backup)
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
        fd = os.open(outbox / MANIFEST_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(manifest)
        st = os.stat(backup.path / MANIFEST_NAME)
        os.utime(outbox / MANIFEST_NAME, ns=(st.st_atime_ns, st.st_mtime_ns))
        log(f"encrypted {len(files)} files of {key}/{backup.backup_id} into {outbox} ({encryption!r})")
        return files

    def _remove_outbox(self, outbox: Path) -> None:
        shutil.rmtree(outbox, ignore_errors=True)
        for parent in outbox.parents:  # the empty series folders of the outbox
            if parent == self.work_dir or not str(parent).startswith(str(self.work_dir)):
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def ship(self, backup: Backup, encryption: Encryption | None, log: LogFn) -> tuple[Envelope, TransferStats]:
        """Copy, check on arrival, publish durably. The outbox of an encrypted copy is
        removed afterwards, also when the ship failed (it holds a whole backup)."""
        outbox = self._outbox_path(backup) if encryption is not None else None
        try:
            return self._ship(backup, encryption, outbox, log)
        finally:
            if outbox is not None:
                self._remove_outbox(outbox)

    def _ship(
        self, backup: Backup, encryption: Encryption | None, outbox: Path | None, log: LogFn
    ) -> tuple[Envelope, TransferStats]:
        key = SeriesKey.of(backup)
        where = f"{key}/{backup.backup_id}"
        # one read of the manifest: the bytes sent, checked on arrival and authenticated
        manifest = (backup.path / MANIFEST_NAME).read_bytes()
        if encryption is not None:
            assert outbox is not None
            files = self._outbox(backup, encryption, outbox, manifest, log)
            source = outbox
        else:
            source, files = backup.path, plain_files(backup.manifest)
        envelope = Envelope(
            manifest_sha256=str(backup.manifest["manifest_sha256"]),
            files=tuple(files),
            encryption=encryption.describe() if encryption else None,
            target=self.name,
            shipped_at=utc_now(),
            manifest_mac=encryption.manifest_mac(manifest) if encryption else None,
        )
        staging = self.staging_dir(key, backup.backup_id)
        names = [f.stored_path for f in files] + [MANIFEST_NAME]
        self.session.run("mkdir", staging, log=log)
        listing = self.session.temp_file("files", "\0".join(names).encode() + b"\0")
        try:
            stats = self._rsync(
                [
                    "-rtp",
                    "--chmod=D700,F600",
                    f"--partial-dir={PARTIAL_DIR}",
                    f"--files-from={listing}",
                    "--from0",
                    f"{source}/",
                    self._remote(staging + "/"),
                ],
                log,
            )
        finally:
            listing.unlink(missing_ok=True)
        log(
            f"rsync {where}: {stats.files_transferred} files, {human_bytes(stats.literal_bytes)} sent as data, "
            f"{human_bytes(stats.matched_bytes)} already there, {human_bytes(stats.bytes_sent)} on the wire"
        )

        # the arrival check, in the staging folder: nothing is published unless it passes
        manifest_sha = hashlib.sha256(manifest).hexdigest()
        state = self._folder_state(staging, names, log)
        problems, extras = _compare(state, files, manifest_sha, allow=(PARTIAL_DIR + "/",))
        if problems:
            bad = [f.stored_path for f in files if any(p.startswith(f.stored_path + ":") for p in problems)]
            if bad:  # so the rerun sends them again instead of trusting size+mtime
                self.session.run("delete-files", staging, log=log, stdin="\0".join(bad).encode() + b"\0")
            raise OffsiteVerificationError(f"rsync arrival check of {where} failed, not published", problems)

        bid = backup.backup_id
        # offsite.json on stdin; flushed to disk and renamed into place on the host
        self.session.run("publish", self.root, self.series_dir(key), bid, *extras, log=log, stdin=envelope.to_bytes())
        log(
            f"published {where} at {self.backup_dir(key, bid)} (sizes and sha256 of {len(files)} files checked, "
            "flushed to disk on the host)"
        )
        return envelope, stats

    # ---------------------------------------------------------------- checks

    def _folder_state(self, folder: str, names: list[str], log: LogFn) -> FolderState:
        """Sizes of every file under ``folder`` and sha256 of ``names`` (one ssh call)."""
        out = self.session.run("folder-state", folder, *names, log=log)
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
        """sha256 of every stored file (and the manifest) on the host, against the envelope;
        with ``deep`` and the copy's key at hand, every encrypted file is also read back and
        decrypted under the context of the file it is meant to be (a ciphertext swapped or
        moved offsite, even with a matching offsite.json, fails here)."""
        envelope = item.envelope
        assert envelope is not None
        folder = self.backup_dir(item.key, item.backup_id)
        names = [f.stored_path for f in envelope.files]
        state = self._folder_state(folder, names, log)
        problems, extras = _compare(state, envelope.files, None, allow=())
        problems += [f"{x}: not part of the backup" for x in extras]
        if deep and envelope.encryption:
            wanted = envelope.encryption.get("key_id")
            if encryption is None or encryption.key_id != wanted:
                log(
                    f"{item.key}/{item.backup_id}: not decrypted by the deep check: encrypted with key id {wanted}, "
                    f"{'no key' if encryption is None else 'key id ' + encryption.key_id} given"
                )
            else:
                for f in envelope.files:
                    if any(p.startswith(f.stored_path + ":") for p in problems):
                        continue  # already known bad
                    context = file_context(item.key.store, item.key.subject, item.backup_id, f.path, f.plain_sha256)
                    problem = self._decrypts(
                        posixpath.join(folder, f.stored_path), f, encryption, context, envelope.encryption.get("scheme")
                    )
                    if problem:
                        problems.append(f"{f.stored_path}: {problem}")
        return problems

    def _decrypts(
        self, path: str, f: StoredFile, encryption: Encryption, context: str, scheme: str | None
    ) -> str | None:
        """Stream ``path`` from the host through the decryption (nothing written); the problem or None."""
        argv = self.session.remote_argv("cat", path)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = proc.stdout, proc.stderr
        assert stdout is not None and stderr is not None  # both are pipes
        errors: list[bytes] = []
        reader = threading.Thread(target=lambda: errors.append(stderr.read()), daemon=True)
        reader.start()
        problem, read_to_end = None, False
        try:
            size, digest = encryption.decrypt_stream(stdout, _Discard(), context, scheme=scheme)
            read_to_end = True
        except DecryptionError as exc:
            problem = f"does not decrypt: {exc}"
        finally:
            if proc.poll() is None and not read_to_end:
                proc.kill()  # the rest is not needed
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.join(timeout=5)
            stdout.close()
        if proc.returncode not in (0, -9) or (proc.returncode == -9 and problem is None):
            # a transport failure, not the data: a truncated stream must not read as tampering
            text = b"".join(errors).decode(errors="replace").strip()
            return f"could not be read back from the host (exit {proc.returncode}): {text[-300:]}"
        if problem is not None:
            return problem
        if size != f.plain_bytes or digest != f.plain_sha256:
            return f"decrypts to {size} bytes sha256 {digest}, the manifest says {f.plain_bytes} {f.plain_sha256}"
        return None

    # ---------------------------------------------------------------- removal

    def delete(self, key: SeriesKey, backup_id: str, log: LogFn) -> None:
        """Rename out of sight first (it stops looking complete), then remove."""
        self.session.run("delete", self.series_dir(key), backup_id, secrets.token_hex(6), log=log)

    def remove_incomplete(self, entry: StagingEntry, log: LogFn) -> None:
        if "/" in entry.name or entry.name in ("", ".", ".."):
            raise OffsiteError(f"refusing to remove staging entry {entry.name!r}")
        path = posixpath.join(self.series_dir(entry.key), STAGING_DIR, entry.name)
        self.session.run("remove", path, log=log)

    def housekeeping(self, older_than: timedelta, now: datetime, log: LogFn) -> list[str]:
        """Remove ``.deleting`` leftovers of an interrupted deletion (never complete-looking)."""
        out = self.session.run("housekeeping", self.root, log=log)
        return [r for r in out.split("\0") if r]

    # ---------------------------------------------------------------- plain files (FileTarget)
    # for the WAL archive: rsync into the folder, sha256sum on the host as the arrival
    # check, small files replaced by one mv (readers see the old or the new file)

    def _path(self, rel: str) -> str:
        return posixpath.join(self.root, check_rel(rel))

    def list_files(self, folder: str, log: LogFn) -> dict[str, int]:
        path = self._path(folder)
        out = self.session.run("list-files", path, log=log)
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
        self.session.run("mkdir", path, log=log)
        listing = self.session.temp_file("files", "\0".join(names).encode() + b"\0")
        try:
            stats = self._rsync(
                [
                    "-rtp",
                    "--chmod=D700,F600",
                    f"--partial-dir={PARTIAL_DIR}",
                    f"--files-from={listing}",
                    "--from0",
                    f"{source_dir}/",
                    self._remote(path + "/"),
                ],
                log,
            )
        finally:
            listing.unlink(missing_ok=True)
        # on disk before a catalog written later can name them (names on stdin, as in delete_files)
        self.session.run("sync-files", path, log=log, stdin="\0".join(names).encode() + b"\0")
        return stats

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
        return self.session.run("exists", path, log=log).strip() == "yes"

    def read_file(self, rel: str, log: LogFn) -> bytes | None:
        path = self._path(rel)
        out = self.session.run("read-file", path, log=log)
        return out[1:].encode() if out.startswith("Y") else None

    def write_file(self, rel: str, data: bytes, log: LogFn) -> None:
        path = self._path(rel)
        # replaced in one mv through a temporary name (readers see the old or the new file)
        self.session.run("write-file", path, secrets.token_hex(4), log=log, stdin=data)

    def delete_files(self, folder: str, names, log: LogFn) -> None:
        names = _plain_names(names)
        if names:  # names on stdin: no command line limit, and never parsed by the shell
            self.session.run("delete-files", self._path(folder), log=log, stdin="\0".join(names).encode() + b"\0")

    # ---------------------------------------------------------------- restore

    def download(self, key: SeriesKey, backup_id: str, dest: Path, log: LogFn) -> TransferStats:
        """The backup folder into ``dest``; resumable: called again with the same ``dest``
        after a failure, files already there with the same size and checksum are not sent
        again, and a partial file (kept in ``.rsync-partial``) is completed."""
        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self._rsync(
            [
                "-rtp",
                "--checksum",
                "--chmod=D700,F600",
                f"--partial-dir={PARTIAL_DIR}",
                self._remote(self.backup_dir(key, backup_id) + "/"),
                f"{dest}/",
            ],
            log,
        )


class _Discard:
    """A sink for a check that only needs the decryption's size and sha256."""

    def write(self, data: bytes) -> int:
        return len(data)


def _compare(
    state: FolderState,
    files: tuple[StoredFile, ...] | list[StoredFile],
    manifest_sha: str | None,
    *,
    allow: tuple[str, ...],
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
