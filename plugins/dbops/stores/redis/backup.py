"""Redis backups: a non-blocking RDB snapshot (``BGSAVE`` + copy, or ``redis-cli --rdb``),
checked by ``redis-check-rdb``.

No Airflow import. Both ways make the server fork and write the RDB from the child, so the
serving process never blocks the way ``SAVE`` does:

- ``bgsave``: ``BGSAVE``, then a copy of the server's own RDB file (``CONFIG GET dir`` +
  ``dbfilename``), for a worker that can read the server's disk. The file copied is proven
  to be the one our save renamed into place (:func:`bgsave_copy`). About 3x faster than
  ``--rdb`` on small and mid-size data: no ``repl-diskless-sync-delay`` wait.
- ``rdb``: ``redis-cli --rdb`` asks for a replication-style full sync (``REPLCONF
  rdb-only``) and streams the RDB; works wherever the worker reaches the port. The password
  reaches redis-cli through ``REDISCLI_AUTH`` only, never ``-a`` (argv is visible to every
  user of the machine in ``ps``); a user name (not a secret) goes with ``--user``.
- ``auto``: ``bgsave`` when the file is readable here and proven to be this server's,
  else ``rdb``; the log says which and why.

Limits: ``rdb`` needs the ``SYNC`` command, ``bgsave`` needs ``CONFIG GET`` and
``BGSAVE`` (managed services often rename or forbid them); in a Redis Cluster each primary
node is a separate endpoint.

The reference a drill and a restore compare with (``DumpResult.description``) is the
RDB itself, loaded into a *scratch* ``redis-server`` dbops starts (:class:`ScratchCopy`)
and described there, never a later read of the live server. Redis only loads an RDB at
start-up, so restores and drills go through such scratch servers too
(:mod:`dbops.stores.redis.recovery`).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from dbops.backup.adapter import Check, DrillEnvironmentError, DumpResult, Endpoint, LogFn
from dbops.backup.repository import fsync_dir
from dbops.tools import ToolError, find_tool, human_bytes, run_tool
from redis.backoff import NoBackoff
from redis.retry import Retry

RDB_FILE = "dump.rdb"
SNAPSHOT_METHODS = ("auto", "bgsave", "rdb")
BGSAVE_TOOL = "redis BGSAVE + copy"
RDB_TOOL = "redis-cli --rdb"
_POLL_S = 0.05
# slack between the server's clock (LASTSAVE) and the RDB file's mtime (same clock when the
# disk is local; a network filesystem may stamp with its own)
_MTIME_SLACK_S = 2.0
SAMPLE_ALL_BELOW = 10_000  # fewer matched keys than this: describe every one
_GLOB_SPECIALS = "\\*?[]"


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a SCAN MATCH pattern."""
    return "".join("\\" + ch if ch in _GLOB_SPECIALS else ch for ch in text)


def redis_client(endpoint: Endpoint, db: int = 0, *, timeout: float = 30.0) -> redis.Redis:
    """A redis-py client (bytes in, bytes out) for ``endpoint``.

    No client-side retries: redis-py counts a refused password as a connection error and
    would retry it with backoff; a failed task is retried by Airflow instead.
    """
    extra = endpoint.extra or {}
    return redis.Redis(
        host=endpoint.host,
        port=endpoint.port,
        username=endpoint.login or None,
        password=endpoint.password,
        db=db,
        ssl=bool(extra.get("ssl", False)),
        ssl_ca_certs=extra.get("ssl_ca_certs"),
        socket_timeout=timeout,
        socket_connect_timeout=10,
        decode_responses=False,
        retry=Retry(NoBackoff(), 0),
    )


def cli_env(endpoint: Endpoint) -> dict[str, str]:
    """Environment for redis-cli: the password as ``REDISCLI_AUTH`` (when there is one)."""
    return {"REDISCLI_AUTH": endpoint.password} if endpoint.password else {}


def cli_connection_args(endpoint: Endpoint) -> list[str]:
    """redis-cli options for ``endpoint``: host, port, user, TLS; never the password."""
    extra = endpoint.extra or {}
    args = ["-h", endpoint.host, "-p", str(endpoint.port), "--no-auth-warning"]
    if endpoint.login:
        args += ["--user", endpoint.login]
    if extra.get("ssl"):
        args.append("--tls")
        if extra.get("ssl_ca_certs"):
            args += ["--cacert", str(extra["ssl_ca_certs"])]
    return args


def rdb_version(path: Path) -> int | None:
    """The RDB format version from the file's ``REDISnnnn`` header, or None if it has none."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[:5] == b"REDIS" and head[5:].isdigit():
        return int(head[5:])
    return None


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode("utf-8", "backslashreplace")


def _keyspace(info: dict[str, Any]) -> dict[str, dict[str, int]]:
    """``{"0": {"keys": n, "expires": m}}`` from ``INFO keyspace``."""
    out = {}
    for name, value in info.items():
        if name.startswith("db") and name[2:].isdigit() and isinstance(value, dict):
            out[name[2:]] = {"keys": int(value.get("keys", 0)), "expires": int(value.get("expires", 0))}
    return out


# --------------------------------------------------------------------------- value digests


class _Digest:
    def __init__(self, kind: str) -> None:
        self._h = hashlib.sha256(kind.encode())

    def add(self, *parts: bytes | str | int | float) -> None:
        for part in parts:
            if isinstance(part, float):
                raw = repr(part).encode()
            elif isinstance(part, int):
                raw = str(part).encode()
            elif isinstance(part, str):
                raw = part.encode()
            else:
                raw = bytes(part)
            self._h.update(len(raw).to_bytes(8, "big"))
            self._h.update(raw)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def value_digest(client: redis.Redis, key: bytes, kind: str) -> str | None:
    """A digest of the value that depends only on its logical content (type-aware).

    Strings by GET, hashes and sets sorted, lists in order, sorted sets with their scores
    in ZRANGE order, streams by XRANGE plus their last id and consumer groups; other
    (module) types fall back to the DUMP payload, equal for equal data on the same
    server version. None when the key vanished meanwhile.
    """
    d = _Digest(kind)
    if kind == "string":
        value = client.get(key)
        if value is None:
            return None
        d.add(value)
    elif kind == "hash":
        for field, value in sorted(client.hgetall(key).items()):
            d.add(field, value)
    elif kind == "list":
        for item in client.lrange(key, 0, -1):
            d.add(item)
    elif kind == "set":
        for member in sorted(client.smembers(key)):
            d.add(member)
    elif kind == "zset":
        # redis-py types these two replies loosely (str, None): they are lists of pairs here
        scored_members: Any = client.zrange(key, 0, -1, withscores=True)
        for member, score in scored_members:
            d.add(member, float(score))
    elif kind == "stream":
        entries: Any = client.xrange(key, "-", "+")
        for entry_id, fields in entries:
            d.add(entry_id, len(fields))
            for field, value in fields.items():
                d.add(field, value)
        info = client.xinfo_stream(key)
        d.add("last-generated-id", info.get("last-generated-id", b""))
        for group in sorted(client.xinfo_groups(key), key=lambda g: g["name"]):
            d.add("group", group["name"], group.get("last-delivered-id", b""), int(group.get("pending", 0)))
    else:
        dumped = client.dump(key)
        if dumped is None:
            return None
        d.add(dumped)
    return d.hexdigest()


def describe_differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Keys missing, unexpected or different between two :meth:`RedisBackup.describe` results."""
    want, got = expected.get("keys", {}), actual.get("keys", {})
    problems = [f"key {k} missing" for k in sorted(set(want) - set(got))]
    problems += [f"key {k} unexpected" for k in sorted(set(got) - set(want))]
    for key in sorted(set(want) & set(got)):
        if want[key] != got[key]:
            problems.append(f"key {key}: {got[key]} != {want[key]}")
    return problems


def describe_server(
    endpoint: Endpoint,
    log: LogFn,
    *,
    match: str | None = None,
    prefix: str | None = None,
    sample_all_below: int = SAMPLE_ALL_BELOW,
) -> dict[str, Any]:
    """Key counts per database and a deterministic sample of keys: type, expiry flag, value digest.

    Only ever pointed at a server dbops started itself from a backup's RDB (a scratch
    server), never at the live store: the live store changes while it is read.
    ``prefix`` (a literal) or ``match`` (a SCAN MATCH glob) restricts the keys looked at.
    When fewer than ``sample_all_below`` keys of a database match, every one is described;
    else only those whose sha1 starts with "0" (1 in 16), chosen by name alone, so two
    servers holding the same data pick the same keys. A server that goes away meanwhile
    is a ToolError naming it.
    """
    try:
        return _describe(endpoint, log, match=match, prefix=prefix, sample_all_below=sample_all_below)
    except redis.RedisError as exc:
        raise ToolError(
            f"redis at {endpoint.host}:{endpoint.port}: describing failed: {type(exc).__name__}: {exc}"
        ) from exc


def _describe(
    endpoint: Endpoint, log: LogFn, *, match: str | None, prefix: str | None, sample_all_below: int
) -> dict[str, Any]:
    if prefix is not None:
        match = glob_escape(prefix) + "*"
    started = time.monotonic()
    with redis_client(endpoint) as client:
        info = client.info("server")
        keyspace = _keyspace(client.info("keyspace"))
    keys_out: dict[str, Any] = {}
    matched: dict[str, int] = {}
    sampled_mode = "all"
    for db in sorted(keyspace, key=int):
        with redis_client(endpoint, int(db)) as client:
            keys = sorted(set(client.scan_iter(match=match, count=1000)))
            matched[db] = len(keys)
            if len(keys) >= sample_all_below:
                sampled_mode = "sha1-prefix-0"
                keys = [k for k in keys if hashlib.sha1(k).hexdigest().startswith("0")]
            for start in range(0, len(keys), 200):
                batch = keys[start : start + 200]
                with client.pipeline(transaction=False) as pipe:
                    for key in batch:
                        pipe.type(key)
                        pipe.pttl(key)
                    meta = pipe.execute()
                for i, key in enumerate(batch):
                    kind, pttl = _text(meta[2 * i]), int(meta[2 * i + 1])
                    if kind == "none" or pttl == -2:
                        continue  # expired since SCAN
                    digest = value_digest(client, key, kind)
                    if digest is None:
                        continue
                    keys_out[f"{db}:{_text(key)}"] = {"type": kind, "expires": pttl >= 0, "digest": digest}
    seconds = time.monotonic() - started
    log(
        f"described redis {endpoint.host}:{endpoint.port}: {sum(matched.values())} keys matched"
        f"{' ' + repr(match) if match else ''}, {len(keys_out)} described in {seconds:.1f}s"
    )
    return {
        "server_version": _text(str(info.get("redis_version", ""))),
        "databases": keyspace,
        "match": match,
        "matched": matched,
        "sample": sampled_mode,
        "sample_all_below": sample_all_below,
        "keys": keys_out,
    }


# --------------------------------------------------------------------------- BGSAVE + copy


class SnapshotUnavailable(Exception):
    """The BGSAVE way cannot serve this server from this worker (auto: use ``--rdb``)."""


def _persistence(client: redis.Redis) -> dict[str, Any]:
    return client.info("persistence")


def server_rdb_path(client: redis.Redis) -> Path:
    """The server's RDB file (``dir`` / ``dbfilename``) as the server names it."""
    try:
        directory = next(iter(client.config_get("dir").values()), None)
        name = next(iter(client.config_get("dbfilename").values()), None)
    except redis.ResponseError as exc:  # CONFIG renamed, or not allowed for this user
        raise SnapshotUnavailable(f"CONFIG GET refused: {exc}") from exc
    if not directory or not name:
        raise SnapshotUnavailable("CONFIG GET gave no dir or dbfilename")
    return Path(_text(directory)) / _text(name)


def local_rdb_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read here (None: it can). A file not written yet is fine when its
    folder is there (a server that never saved): the save proves whether it is the server's."""
    try:
        os.close(os.open(path, os.O_RDONLY))
    except FileNotFoundError:
        if path.parent.is_dir():
            return None
        return f"no folder {path.parent} on this machine"
    except OSError as exc:
        return f"{path} is not readable here: {exc.strerror or exc}"
    return None


def _wait_for_fork_children(client: redis.Redis, deadline: float, log: LogFn, timeout: float) -> float:
    """Wait while the server has a fork child (an RDB save, an AOF rewrite, a module fork),
    which makes BGSAVE refuse; the seconds waited."""
    started = time.monotonic()
    logged = False
    while True:
        info = _persistence(client)
        busy = [
            name
            for name in ("rdb_bgsave_in_progress", "aof_rewrite_in_progress", "module_fork_in_progress")
            if int(info.get(name, 0))
        ]
        if not busy:
            return time.monotonic() - started
        if not logged:
            log(f"the server is busy ({', '.join(busy)}): waiting for it before our BGSAVE")
            logged = True
        if time.monotonic() > deadline:
            raise ToolError(f"the server still had {', '.join(busy)} after {timeout:.0f}s: no BGSAVE of ours ran")
        time.sleep(_POLL_S)


def _bgsave_refused_busy(exc: redis.ResponseError) -> bool:
    # "Background save already in progress", or "Another child process is active (AOF?)"
    text = str(exc)
    return "already in progress" in text or "child process is active" in text


def _saves_since(before: dict[str, Any], after: dict[str, Any]) -> int | None:
    if "rdb_saves" not in before or "rdb_saves" not in after:
        return None  # before Redis 7: LASTSAVE alone tells
    return int(after["rdb_saves"]) - int(before["rdb_saves"])


def _copy_fd(fd: int, target: Path) -> int:
    """Copy the open file ``fd`` from its start into a new ``target`` (0600), fsynced; its size."""
    copied = 0
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            sent = os.sendfile(out, fd, copied, 64 * 1024 * 1024)
            if sent == 0:
                break
            copied += sent
        os.fsync(out)
    finally:
        os.close(out)
    fsync_dir(target.parent)
    return copied


def bgsave_copy(client: redis.Redis, rdb_path: Path, target: Path, *, timeout: float, log: LogFn) -> dict[str, Any]:
    """BGSAVE, then copy the RDB file it wrote at ``rdb_path`` into ``target``; facts of the way.

    A fork child already running (the server's own ``save`` schedule, another client's
    BGSAVE, an AOF rewrite) is waited for, then our BGSAVE started; plain ``BGSAVE``, never
    ``BGSAVE SCHEDULE`` (its reply does not say when, or whether, the save ran). The file is
    the one our save renamed into place when: our save ended with
    ``rdb_last_bgsave_status:ok``, no other save ended between ours and the ``open``
    (``rdb_saves``, ``LASTSAVE``, nothing in progress, read again after it), its inode is
    not the one the path had before our save, and its mtime falls within our save. The
    copy reads that open fd, so a later save (which renames another file over the path)
    cannot change what is copied. A file that is not this server's (another machine's
    disk at the same path) is :class:`SnapshotUnavailable`; a failed save a ToolError.
    ``timeout`` bounds the waits and our save.
    """
    started = time.monotonic()
    deadline = started + timeout
    waited = 0.0
    attempts = 0
    while True:
        attempts += 1
        waited += _wait_for_fork_children(client, deadline, log, timeout)
        before = _persistence(client)
        lastsave_before = int(before["rdb_last_save_time"])
        try:
            st = os.stat(rdb_path)
            inode_before: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            inode_before = None
        if "rdb_saves" not in before:  # LASTSAVE must be able to advance past the previous save
            while int(client.time()[0]) <= lastsave_before:
                time.sleep(0.1)
        issued_at = int(client.time()[0])
        try:
            client.execute_command("BGSAVE")
        except redis.ResponseError as exc:
            if _bgsave_refused_busy(exc):
                continue  # a save (or rewrite) began since we looked: wait for it
            raise SnapshotUnavailable(f"BGSAVE refused: {exc}") from exc
        save_started = time.monotonic()
        while int((after := _persistence(client)).get("rdb_bgsave_in_progress", 0)):
            if time.monotonic() > deadline:
                raise ToolError(f"BGSAVE still running after {timeout:.0f}s (snapshot_timeout_s)")
            time.sleep(_POLL_S)
        save_seconds = time.monotonic() - save_started
        status = _text(str(after.get("rdb_last_bgsave_status", "")))
        if status != "ok":
            raise ToolError(
                f"BGSAVE failed on the server (rdb_last_bgsave_status:{status}); its log says why "
                "(often a full or read-only disk at its dir)"
            )
        lastsave = int(after["rdb_last_save_time"])
        saves = _saves_since(before, after)
        if saves not in (1, None) or (saves is None and lastsave <= lastsave_before):
            log("another save ended together with ours: the file may be that one; saving again")
            continue
        try:
            fd = os.open(rdb_path, os.O_RDONLY)
        except OSError as exc:
            raise SnapshotUnavailable(
                f"the server saved, but {rdb_path} cannot be opened here: {exc.strerror or exc}"
            ) from exc
        try:
            opened = os.fstat(fd)
            again = _persistence(client)
            if (
                int(again.get("rdb_bgsave_in_progress", 0))
                or _saves_since(after, again) not in (0, None)
                or int(again["rdb_last_save_time"]) != lastsave
            ):
                log("another save began right after ours: the file opened may be that one; saving again")
                continue
            if inode_before == (opened.st_dev, opened.st_ino):
                raise SnapshotUnavailable(
                    f"{rdb_path} here did not change with our BGSAVE: it is not this server's file "
                    "(another machine's disk, or another path on the server)"
                )
            if not issued_at - _MTIME_SLACK_S <= opened.st_mtime <= lastsave + 1 + _MTIME_SLACK_S:
                raise SnapshotUnavailable(
                    f"{rdb_path} here was modified at {opened.st_mtime:.0f}, not during our save "
                    f"({issued_at}..{lastsave}, server clock): it is not this server's file"
                )
            copy_started = time.monotonic()
            try:
                size = _copy_fd(fd, target)
            except OSError as exc:
                raise ToolError(f"copying {rdb_path} into {target} failed: {exc}") from exc
        finally:
            os.close(fd)
        if size != opened.st_size:
            raise ToolError(f"copied {size} bytes of {rdb_path}, the file had {opened.st_size}")
        return {
            "method": "bgsave",
            "server_file": str(rdb_path),
            "waited_for_other_saves_s": round(waited, 3),
            "bgsave_attempts": attempts,
            "bgsave_seconds": round(save_seconds, 3),
            "copy_seconds": round(time.monotonic() - copy_started, 3),
            "lastsave": lastsave,
        }


# --------------------------------------------------------------------------- adapter


class RedisBackup:
    """A non-blocking RDB snapshot of one Redis server into ``<staging>/dump.rdb``.

    ``snapshot_method``: see the module's docstring. The class default is ``rdb``, the way
    that works for any server the worker reaches; the adapter passes the configured one
    (``redis.snapshot_method``, ``auto`` unless set).
    """

    store = "redis"

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float = 600.0,
        sample_all_below: int = SAMPLE_ALL_BELOW,
        match: str | None = None,
        scratch_dir: Path | None = None,
        snapshot_method: str = "rdb",
    ) -> None:
        if snapshot_method not in SNAPSHOT_METHODS:
            raise ValueError(f"snapshot_method {snapshot_method!r} is not one of {list(SNAPSHOT_METHODS)}")
        self.endpoint = endpoint
        self.timeout = timeout
        self.snapshot_method = snapshot_method
        self.sample_all_below = sample_all_below
        self.match = match
        self.scratch_dir = scratch_dir

    def __repr__(self) -> str:
        return f"RedisBackup({self.endpoint!r})"

    def describe(self, log: LogFn, *, match: str | None = None, prefix: str | None = None) -> dict[str, Any]:
        """:func:`describe_server` of this endpoint. Kept only for the Redis code still in the
        generic restore module until it is removed; point it at scratch servers only."""
        return describe_server(
            self.endpoint, log, match=match or self.match, prefix=prefix, sample_all_below=self.sample_all_below
        )

    def rdb_argv(self, target: Path) -> list[str]:
        """The redis-cli command line for the snapshot (no password in it: see :func:`cli_env`)."""
        return [find_tool("redis-cli"), *cli_connection_args(self.endpoint), "--rdb", str(target)]

    def snapshot(self, target: Path, log: LogFn) -> dict[str, Any]:
        """Write the RDB to ``target`` the configured way; what was done (``method``, why, timings)."""
        if self.snapshot_method == "rdb":
            log("snapshot: redis-cli --rdb (snapshot_method rdb)")
            return self._snapshot_rdb(target, log, reason="snapshot_method rdb")
        try:
            with redis_client(self.endpoint, timeout=max(30.0, min(self.timeout, 300.0))) as client:
                rdb_path = server_rdb_path(client)
                problem = local_rdb_problem(rdb_path)
                if problem:
                    raise SnapshotUnavailable(problem)
                log(f"snapshot: BGSAVE, then a copy of the server's {rdb_path} (readable here)")
                facts = bgsave_copy(client, rdb_path, target, timeout=self.timeout, log=log)
        except SnapshotUnavailable as exc:
            target.unlink(missing_ok=True)
            if self.snapshot_method == "bgsave":
                raise ToolError(f"snapshot_method bgsave: {exc}") from exc
            log(f"snapshot: redis-cli --rdb (auto: {exc})")
            return self._snapshot_rdb(target, log, reason=f"auto: {exc}")
        except redis.RedisError as exc:
            raise ToolError(f"redis at {self.endpoint.host}:{self.endpoint.port}: {type(exc).__name__}: {exc}") from exc
        log(
            f"BGSAVE took {facts['bgsave_seconds']:.2f}s (after {facts['waited_for_other_saves_s']:.2f}s waiting "
            f"for other saves), the copy {facts['copy_seconds']:.2f}s"
        )
        return {
            **facts,
            "reason": f"snapshot_method {self.snapshot_method}: the server's RDB file, readable here, proven ours",
        }

    def _snapshot_rdb(self, target: Path, log: LogFn, *, reason: str) -> dict[str, Any]:
        version = run_tool([find_tool("redis-cli"), "--version"], log=log).strip()
        started = time.monotonic()
        argv = self.rdb_argv(target)
        run_tool(argv, log=log, env=cli_env(self.endpoint), progress_path=target, timeout=self.timeout)
        return {
            "method": "rdb",
            "reason": reason,
            "tool_version": version,
            "seconds": round(time.monotonic() - started, 3),
        }

    def _server_facts(self) -> dict[str, Any]:
        try:
            with redis_client(self.endpoint) as client:
                info = client.info("all")
                try:
                    value = next(iter(client.config_get("rdbcompression").values()), None)
                    compression = {"yes": "lzf", "no": "none"}.get(_text(value or b""), "unknown")
                except redis.ResponseError:  # CONFIG renamed or not allowed for this user
                    compression = "unknown"
        except redis.RedisError as exc:
            raise ToolError(f"redis at {self.endpoint.host}:{self.endpoint.port}: {type(exc).__name__}: {exc}") from exc
        return {"info": info, "compression": compression}

    def dump(self, staging: Path, log: LogFn) -> DumpResult:
        """Take the RDB (:meth:`snapshot`), then describe *the RDB*: it is loaded into a scratch
        redis-server (started here, on a free port, removed afterwards) and that server is described.

        The live server keeps changing after its fork wrote the RDB, so reading it again
        would describe another state than the backup holds, and every drill of a busy
        store would fail. Describing the artifact costs one load of it (time about the
        restore's, memory about the data set's) but gives the one reference a drill and a
        restore may judge by. Keys whose TTL passed before the load are not in it:
        Redis drops them when it loads, as any restore would.
        """
        target = Path(staging) / RDB_FILE
        before = self._server_facts()
        info = before["info"]
        keyspace = _keyspace(info)
        log(
            f"redis {info.get('redis_version')} at {self.endpoint.host}:{self.endpoint.port}: "
            f"{sum(db['keys'] for db in keyspace.values())} keys in {len(keyspace)} databases, "
            f"used memory {info.get('used_memory_human')}"
        )
        started = time.monotonic()
        try:
            snapshot = self.snapshot(target, log)
        except BaseException:
            target.unlink(missing_ok=True)  # a partial RDB is not a snapshot
            raise
        seconds = time.monotonic() - started
        if snapshot["method"] == "bgsave":
            tool, version = BGSAVE_TOOL, f"redis-server {info.get('redis_version')}"
        else:
            tool, version = RDB_TOOL, snapshot.pop("tool_version")
        if not target.is_file() or target.stat().st_size == 0:
            raise ToolError(f"{tool} reported success but wrote no {RDB_FILE}")
        target.chmod(0o600)
        version_in_file = rdb_version(target)
        if version_in_file is None:
            raise ToolError(f"{target} does not start with an RDB header")
        size = target.stat().st_size
        log(f"RDB v{version_in_file} of {human_bytes(size)} in {seconds:.1f}s; describing it in a scratch redis-server")
        described_at = time.monotonic()
        with ScratchCopy(
            target, port=None, scratch_dir=self.scratch_dir, prefix="dbops_describe_redis_", log=log
        ) as scratch:
            description = describe_server(
                scratch.endpoint, log, match=self.match, sample_all_below=self.sample_all_below
            )
        held = description["databases"]
        return DumpResult(
            tool=tool,
            tool_version=version,
            server_version=str(info.get("redis_version", "")),
            compression=before["compression"],
            details={
                "path": RDB_FILE,
                "bytes": size,
                "rdb_version": version_in_file,
                "seconds": round(seconds, 3),
                "snapshot": snapshot,
                "describe_seconds": round(time.monotonic() - described_at, 3),
                # what the RDB holds (as loaded), not what the live server held before the fork
                "keyspace": held,
                "keys": sum(db["keys"] for db in held.values()),
                "keys_before_snapshot": sum(db["keys"] for db in keyspace.values()),
                "used_memory": info.get("used_memory"),
                "used_memory_human": info.get("used_memory_human"),
                "maxmemory": info.get("maxmemory"),
                "maxmemory_policy": info.get("maxmemory_policy"),
                "redis_mode": info.get("redis_mode"),
                "role": info.get("role"),
                "aof_enabled": info.get("aof_enabled"),
            },
            description=description,
        )

    def check(self, backup_dir: Path, manifest: dict[str, Any], log: LogFn) -> list[Check]:
        """The RDB header, then ``redis-check-rdb`` (structure and CRC64) must say OK."""
        path = Path(backup_dir) / RDB_FILE
        if not path.is_file():
            return [Check("dump.rdb present", False, f"{path} missing")]
        version = rdb_version(path)
        header = f"RDB version {version}" if version else "no REDISnnnn header"
        checks = [Check("rdb header", version is not None, header)]
        argv = [find_tool("redis-check-rdb"), str(path)]
        started = time.monotonic()
        try:  # it reports on stdout, errors included, so it is read whole here (a few lines)
            proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            checks.append(Check("redis-check-rdb", False, f"redis-check-rdb could not run: {exc}"))
            return checks
        out = proc.stdout + proc.stderr
        for line in out.splitlines():
            if line.startswith(("[info]", "---", "[additional info]")) or "ERROR" in line or "error" in line:
                log(f"redis-check-rdb: {line}")
        ok = proc.returncode == 0 and "RDB looks OK" in out
        if ok:
            summary = "; ".join(line.split("]", 1)[1].strip() for line in out.splitlines() if line.startswith("[info]"))
            detail = f"RDB looks OK ({summary}) in {time.monotonic() - started:.1f}s"
        else:
            lines = out.splitlines()
            marker = next((i for i, line in enumerate(lines) if "RDB ERROR DETECTED" in line), None)
            error = lines[marker + 1 : marker + 4] if marker is not None else lines[-4:]
            detail = f"redis-check-rdb failed with exit code {proc.returncode}: " + " | ".join(error)
        checks.append(Check("redis-check-rdb", ok, detail))
        if ok and "keyspace" in (manifest.get("details") or {}):
            checks.append(_description_agrees(out, manifest["details"]))
        return checks


_CHECK_DB = re.compile(r"Selecting DB ID (\d+)")
_CHECK_INFO = re.compile(r"^\[info\] (\d+) (keys read|already expired)$", re.MULTILINE)


def _description_agrees(check_output: str, details: dict[str, Any]) -> Check:
    """redis-check-rdb's own reading of the file against what the dump described (loaded in a
    scratch server): the same databases, and as many keys, less those that expired meanwhile."""
    in_file = {m.group(1) for m in _CHECK_DB.finditer(check_output)}
    info = {name: int(n) for n, name in _CHECK_INFO.findall(check_output)}
    described = {db for db, counts in details["keyspace"].items() if counts.get("keys")}
    keys = int(details.get("keys", 0))
    read, expired = info.get("keys read"), info.get("already expired", 0)
    problems = []
    if described - in_file:
        problems.append(f"databases {sorted(described - in_file, key=int)} described but not in the RDB")
    if read is None:
        problems.append("redis-check-rdb gave no key count")
    elif not read - expired <= keys <= read:
        problems.append(f"{keys} keys described, the RDB holds {read} ({expired} already expired)")
    detail = "; ".join(problems) or f"{keys} keys in databases {sorted(in_file, key=int)}, as described"
    return Check("description matches the RDB", not problems, detail)


# --------------------------------------------------------------------------- scratch servers

# How long a scratch redis-server may take to load an RDB: a base for start-up plus the
# file at a load rate well below what Redis 7 reaches on one slow core (tens of MB/s for
# many small keys, more for large values), so a big backup is not cut off half-loaded.
SCRATCH_LOAD_BASE_S = 60.0
SCRATCH_DATABASES = 256
SCRATCH_LOAD_BYTES_PER_S = 5 * 1024 * 1024


def scratch_load_timeout(rdb_bytes: int) -> float:
    """Seconds a scratch server gets to load an RDB of ``rdb_bytes`` (1 GiB: about 265 s)."""
    return SCRATCH_LOAD_BASE_S + max(0, rdb_bytes) / SCRATCH_LOAD_BYTES_PER_S


def _conf_quote(value: str) -> str:
    if any(ch in value for ch in "\r\n\0"):
        raise ToolError("redis.conf values cannot hold line breaks")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port on 127.0.0.1 that is free now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ScratchRedis:
    """A ``redis-server`` child started by :func:`restore_into_scratch`; ``stop()`` ends it."""

    def __init__(self, endpoint: Endpoint, process: subprocess.Popen, workdir: Path, log_path: Path) -> None:
        self.endpoint = endpoint
        self.process = process
        self.workdir = workdir
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (no save points are configured, so nothing is written), then SIGKILL. Idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ScratchRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ScratchRedis(pid={self.pid}, {self.endpoint!r}, {self.workdir})"


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def restore_into_scratch(
    rdb_path: Path | None,
    *,
    redis_server_bin: str = "redis-server",
    port: int,
    workdir: Path,
    password: str | None = None,
    log: LogFn,
    timeout: float | None = None,
    link: bool = False,
) -> ScratchRedis:
    """Start a private ``redis-server`` on 127.0.0.1:``port`` that loads ``rdb_path`` (None: empty).

    ``workdir`` (created 0700) receives ``dump.rdb`` (a copy, 0600; with ``link`` a symlink
    to ``rdb_path``, which is safe: the server has no save points and no AOF, and Redis
    replaces its dbfilename by rename, never by writing into it), ``redis.conf`` (0600, it
    holds the password) and ``redis.log``. It runs as a child of this process in the
    foreground. Returns once it answers PING with the data loaded, and its INFO shows it
    is the process just started (not something else on that port). A password is
    generated when none is given; it is in ``.endpoint``. ``timeout`` (None: grows with
    the RDB's size, :func:`scratch_load_timeout`) bounds start-up and loading.

    A port in use, a scratch folder that cannot be written and a load that does not
    finish in time are DrillEnvironmentError (the environment, not the backup); an RDB
    the server refuses to load is a ToolError.
    """
    server = find_tool(redis_server_bin) if os.sep not in redis_server_bin else redis_server_bin
    size = 0
    if rdb_path is not None:
        rdb_path = Path(rdb_path)
        if rdb_version(rdb_path) is None:
            raise ToolError(f"{rdb_path} is not an RDB file")
        size = rdb_path.stat().st_size
    if timeout is None:
        timeout = scratch_load_timeout(size)
    if not _port_free(port):
        raise DrillEnvironmentError(f"port {port} on 127.0.0.1 is in use; a scratch Redis needs a free port")
    workdir = Path(workdir)
    password = password or secrets.token_urlsafe(24)
    copy = workdir / RDB_FILE
    conf = workdir / "redis.conf"
    try:
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        workdir.chmod(0o700)
        copy.unlink(missing_ok=True)
        if rdb_path is not None:
            if link:
                copy.symlink_to(rdb_path.resolve())
            else:
                shutil.copyfile(rdb_path, copy)
                copy.chmod(0o600)
        settings = {
            "bind": "127.0.0.1",
            "port": str(port),
            "protected-mode": "yes",
            "daemonize": "no",
            "dir": _conf_quote(str(workdir)),
            "dbfilename": _conf_quote(RDB_FILE),
            "appendonly": "no",
            "save": '""',
            "logfile": '""',
            "requirepass": _conf_quote(password),
            # more than the default 16: a server refuses to load an RDB with a higher db number
            "databases": str(SCRATCH_DATABASES),
        }
        conf.unlink(missing_ok=True)
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("# dbops scratch instance for a restore; holds the password\n")
            fh.write("".join(f"{key} {value}\n" for key, value in settings.items()))
        log_path = workdir / "redis.log"
        log_fh = open(log_path, "ab")  # noqa: SIM115 (closed right after the child has it)
    except OSError as exc:
        raise DrillEnvironmentError(f"cannot prepare the scratch Redis folder {workdir}: {exc}") from exc
    what = f"{human_bytes(size)} RDB" if rdb_path is not None else "no data"
    log(f"starting scratch redis-server on 127.0.0.1:{port} in {workdir} with {what} (load timeout {timeout:.0f}s)")
    with log_fh:
        process = subprocess.Popen(
            [server, str(conf)], cwd=workdir, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT
        )
    endpoint = Endpoint(host="127.0.0.1", port=port, password=password)
    scratch = ScratchRedis(endpoint, process, workdir, log_path)
    started = time.monotonic()
    try:
        while True:
            if process.poll() is not None:
                tail = _log_tail(log_path)
                if "Address already in use" in tail or "Could not create server TCP listening socket" in tail:
                    raise DrillEnvironmentError(f"scratch redis-server could not listen on 127.0.0.1:{port}:\n{tail}")
                raise ToolError(f"scratch redis-server exited with code {process.returncode}:\n{tail}")
            try:
                with redis_client(endpoint, timeout=5) as client:
                    if client.ping():
                        info = client.info("all")
                        if int(info.get("loading", 0)) == 0:
                            break
            except (redis.BusyLoadingError, redis.ConnectionError, redis.TimeoutError):
                pass
            if time.monotonic() - started > timeout:
                raise DrillEnvironmentError(
                    f"scratch redis-server not ready after {timeout:.0f}s ({what}):\n{_log_tail(log_path)}"
                )
            time.sleep(0.1)
        if int(info.get("process_id", -1)) != process.pid:
            raise DrillEnvironmentError(
                f"127.0.0.1:{port} is answered by another process (pid {info.get('process_id')})"
            )
    except BaseException:
        scratch.stop(timeout=10)
        raise
    keyspace = _keyspace(info)
    log(
        f"scratch redis {info.get('redis_version')} (pid {process.pid}) loaded "
        f"{sum(db['keys'] for db in keyspace.values())} keys in {time.monotonic() - started:.1f}s"
    )
    return scratch


class ScratchCopy:
    """A scratch redis-server in a fresh folder under ``scratch_dir``, loaded from ``rdb_path``
    (None: empty); stopped and its folder removed on exit. Yields the :class:`ScratchRedis`.

    ``port`` None: a free one, tried again once if another process takes it meanwhile.
    """

    def __init__(
        self,
        rdb_path: Path | None,
        *,
        port: int | None,
        scratch_dir: Path | None,
        prefix: str,
        log: LogFn,
        link: bool = True,
        timeout: float | None = None,
    ) -> None:
        self.rdb_path, self.port, self.scratch_dir, self.prefix, self.log = rdb_path, port, scratch_dir, prefix, log
        self.link, self.timeout = link, timeout
        self.server: ScratchRedis | None = None
        self.workdir: Path | None = None

    def __enter__(self) -> ScratchRedis:
        try:
            if self.scratch_dir is not None:
                Path(self.scratch_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            self.workdir = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self.scratch_dir))
        except OSError as exc:
            raise DrillEnvironmentError(
                f"cannot create a scratch folder in {self.scratch_dir or 'the temp folder'}: {exc}"
            ) from exc
        attempts = 1 if self.port else 2
        try:
            for attempt in range(attempts):
                try:
                    self.server = restore_into_scratch(
                        self.rdb_path,
                        port=self.port or free_port(),
                        workdir=self.workdir,
                        log=self.log,
                        link=self.link,
                        timeout=self.timeout,
                    )
                    break
                except DrillEnvironmentError as exc:
                    if attempt + 1 == attempts or "listen" not in str(exc) and "in use" not in str(exc):
                        raise
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        assert self.server is not None  # the loop above either started one or raised
        return self.server

    def __exit__(self, *exc: object) -> None:
        try:
            if self.server is not None:
                self.server.stop()
                self.log(f"stopped scratch redis-server (pid {self.server.pid})")
        finally:
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
