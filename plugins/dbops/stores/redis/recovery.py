"""Redis restores, comparisons and drills (no Airflow import).

Redis loads an RDB only at start-up, so every restore and every drill starts from a
*scratch* ``redis-server`` on 127.0.0.1 that loads the backup's RDB, and copies its keys
into a running Redis with ``MIGRATE host port "" <db> <timeout> COPY [REPLACE] AUTH2 user
password KEYS ...``: the server's own DUMP/RESTORE, values and TTLs exact, any type
(modules included), server to server in batches, the password sent in the command (the
protocol), never on a command line or in a log.

MIGRATE moves keys of the *connection's selected database*, so each database the RDB
holds (0..N) is copied from a client selected on it, into the same database number of
the target. ``NOKEY`` (or a key absent from the target afterwards) is an error, with one
exception: a key that had a TTL when it was listed and is gone from the scratch server
too expired meanwhile (the scratch server has no other client, so expiry is the only
way a key leaves it); those are counted and reported as notes.

A drill goes through the same copy: the RDB is loaded into scratch server A, copied
with :func:`copy_keys` into an empty scratch server B, A is compared with the backup's
description (written at backup time from the RDB itself) and B with A.

What a comparison tolerates: **keys with a TTL** that are absent expired after the
backup (Redis drops expired keys when it loads an RDB). Keys without a TTL must all be
there, equal.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbops.backup.adapter import (
    DrillComparison,
    Endpoint,
    Links,
    LogFn,
    RestoreFailed,
    RestorePlan,
    RestoreRefused,
    RestoreRequest,
)
from dbops.backup.repository import Backup
from dbops.backup.restore import DRILL_PREFIX, confirm_overwrite, finish
from dbops.backup.runner import source_description
from dbops.stores.redis.backup import (
    RDB_FILE,
    SAMPLE_ALL_BELOW,
    ScratchCopy,
    ScratchRedis,
    _keyspace,
    describe_server,
    free_port,  # noqa: F401  (part of this module's vocabulary)
    redis,
    redis_client,
    value_digest,
)
from dbops.tools import human_bytes

_CONN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode("utf-8", "backslashreplace")


class _Scratch(ScratchCopy):
    """A scratch redis-server loaded from a backup's RDB; stopped and its folder removed on exit."""

    def __init__(self, backup: Backup, *, port: int | None, scratch_dir: Path | None, prefix: str, log: LogFn) -> None:
        super().__init__(backup.path / RDB_FILE, port=port, scratch_dir=scratch_dir, prefix=prefix, log=log)


# --------------------------------------------------------------------------- the request and the plan


def check_request(request: RestoreRequest) -> None:
    """The Redis Params, without I/O: a target connection id, and nothing that does not apply."""
    target = request.target
    if not target:
        raise RestoreRefused(
            "store redis needs target: the Airflow connection id of the Redis to restore into "
            "(a scratch instance, or the live one with confirm_overwrite)"
        )
    if not isinstance(target, str) or not _CONN_ID.match(target):
        raise RestoreRefused(f"target {target!r} is not an Airflow connection id")
    if request.database:
        raise RestoreRefused(
            f"database {request.database!r} does not apply to redis: a restore copies every logical database "
            "the backup holds into the same database numbers of the target"
        )
    if request.topics:
        raise RestoreRefused("topics applies to store kafka only")


def is_live(links: Links, live_conn_id: str, target: str, endpoint: Endpoint) -> bool:
    """The target is the live Redis: the configured connection, or the same host and port."""
    if target == live_conn_id:
        return True
    if not links.connection_exists(live_conn_id):
        return False
    live = links.endpoint(live_conn_id, "redis")
    return (live.host, live.port) == (endpoint.host, endpoint.port)


def plan_redis(target: str, *, live: bool, tls: bool, confirm: str) -> dict[str, Any]:
    """Refuses a TLS target (MIGRATE from a plain scratch server cannot reach it) and an
    unconfirmed restore into the live Redis."""
    if tls:
        raise RestoreRefused(
            f"Redis {target!r} uses TLS: the scratch redis-server's MIGRATE connects in plain TCP and cannot "
            "reach it; restore into a non-TLS instance"
        )
    reason = f"{target!r} is the live Redis (what clients use)" if live else None
    confirmed = confirm_overwrite(target=target, reason=reason, confirm=confirm)
    return {"target": target, "live": live, "confirmed": confirmed}


def _target_state(endpoint: Endpoint, target: str) -> dict[str, Any]:
    """Keys per database of the target, and its eviction settings (when CONFIG may be read)."""
    secret = endpoint.password
    try:
        with redis_client(endpoint, timeout=10) as client:
            keyspace = _keyspace(client.info("keyspace"))
            try:
                config = client.config_get("maxmemory")
                config.update(client.config_get("maxmemory-policy"))
                maxmemory = int(config.get(b"maxmemory", config.get("maxmemory", 0)) or 0)
                policy = _text(config.get(b"maxmemory-policy", config.get("maxmemory-policy", b"")) or b"")
            except redis.ResponseError:  # CONFIG renamed or not allowed for this user
                maxmemory, policy = 0, ""
    except redis.AuthenticationError as exc:
        raise RestoreRefused(
            f"Redis {target!r} refused the connection's credentials: {_redact(str(exc), secret)}"
        ) from None
    except redis.RedisError as exc:
        raise RestoreFailed(
            f"Redis {target!r} ({endpoint.host}:{endpoint.port}) cannot be reached: "
            f"{type(exc).__name__}: {_redact(str(exc), secret)}"
        ) from None
    return {"keyspace": keyspace, "maxmemory": maxmemory, "maxmemory_policy": policy}


def plan_restore(
    backup: Backup, request: RestoreRequest, *, links: Links, live_conn_id: str, log: LogFn
) -> RestorePlan:
    """Every check that can refuse before a key is written, and the lines an operator reads."""
    check_request(request)
    target = request.target
    if not links.connection_exists(target):
        raise RestoreRefused(
            f"no Airflow connection {target!r}: target names the connection of the Redis to restore into"
        )
    endpoint = links.endpoint(target, "redis")
    live = is_live(links, live_conn_id, target, endpoint)
    checked = plan_redis(target, live=live, tls=bool((endpoint.extra or {}).get("ssl")), confirm=request.confirm)
    state = _target_state(endpoint, target)
    held = source_description(backup).get("databases", {})
    dbs = sorted(held, key=int)
    backup_keys = sum(int(d.get("keys", 0)) for d in held.values())
    target_keys = sum(d["keys"] for d in state["keyspace"].values())
    rdb = backup.path / RDB_FILE
    size = human_bytes(rdb.stat().st_size) if rdb.is_file() else "?"
    actions = [
        f"load the RDB of backup {backup.backup_id} ({size}, {backup_keys} keys in database(s) "
        f"{', '.join(dbs) or 'none'}) into a scratch redis-server on 127.0.0.1",
        f"copy its keys with MIGRATE ... COPY into {target!r} ({endpoint.host}:{endpoint.port}), each database "
        "into the same database number, TTLs kept",
    ]
    if live:
        actions.append(f"{target!r} is the live Redis (what clients use); confirm given")
    if target_keys:
        actions.append(
            f"{target!r} holds {target_keys} key(s) now: keys of the backup it lacks are added, keys it holds "
            "with the same value are left alone, its keys that are not in the backup are not touched"
        )
    if checked["confirmed"]:
        actions.append(
            f"keys of the backup that exist in {target!r} with other values will be replaced (confirm given)"
        )
    else:
        actions.append(
            f"if keys of the backup exist in {target!r} with other values, the restore stops before writing "
            "anything (confirm_overwrite not given)"
        )
    if state["maxmemory"] and state["maxmemory_policy"] not in ("", "noeviction"):
        actions.append(
            f"{target!r} has maxmemory {human_bytes(state['maxmemory'])} with {state['maxmemory_policy']}: "
            "copied keys may evict other keys to make room"
        )
    for line in actions:
        log(f"plan: {line}")
    return RestorePlan(
        store="redis",
        subject=None,
        backup_id=backup.backup_id,
        source=None,
        target=target,
        exists=target_keys > 0,
        already=False,  # known only once the RDB is loaded: the restore then copies nothing again
        overwrite=checked["confirmed"],
        actions=actions,
        details={
            "live": live,
            "host": endpoint.host,
            "port": endpoint.port,
            "target_keys": target_keys,
            "backup_keys": backup_keys,
            "databases": dbs,
        },
    )


# --------------------------------------------------------------------------- comparisons


def compare_redis(expected: dict[str, Any], actual: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(differences, notes) between two :func:`describe_server` results (reference, copy)."""
    want, got = expected.get("keys", {}), actual.get("keys", {})
    sampled = expected.get("sample") != "all"
    notes: list[str] = []
    missing = sorted(set(want) - set(got))
    expired = [k for k in missing if want[k].get("expires")]
    if expired:
        notes.append(
            f"{len(expired)} key(s) with a TTL are absent, expired since the backup (e.g. {', '.join(expired[:3])})"
        )
    problems = [f"key {k} missing" for k in missing if not want[k].get("expires")]
    if not sampled:
        problems += [f"key {k} unexpected" for k in sorted(set(got) - set(want))]
    for key in sorted(set(want) & set(got)):
        if want[key] != got[key]:
            problems.append(f"key {key}: {got[key]} != {want[key]}")
    if expected.get("match") is None and sampled:
        # Not every key was compared: the key counts must at least fit
        for db, counts in sorted(expected.get("databases", {}).items()):
            have = int(actual.get("matched", {}).get(db, 0))
            low, high = counts["keys"] - counts.get("expires", 0), counts["keys"]
            if not low <= have <= high:
                problems.append(f"db {db}: {have} keys restored, the source had {high} ({high - low} with a TTL)")
    if sampled:
        notes.append(f"{len(want)} sampled keys compared (1 in 16 by name; the source had too many to compare all)")
    return problems, notes


def _describe_like(endpoint: Endpoint, reference: dict[str, Any], log: LogFn) -> dict[str, Any]:
    """Describe a server with the rules the reference was described with (match, sampling)."""
    return describe_server(
        endpoint,
        log,
        match=reference.get("match"),
        sample_all_below=int(reference.get("sample_all_below", SAMPLE_ALL_BELOW)),
    )


# --------------------------------------------------------------------------- the copy


@dataclass
class CopyOutcome:
    databases: list[int] = field(default_factory=list)
    copied: int = 0
    replaced: int = 0
    same: int = 0
    expired: int = 0  # had a TTL, gone from the scratch server before it could be copied
    checked: int = 0
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _same_value(src: redis.Redis, dst: redis.Redis, key: bytes) -> bool:
    kind = _text(src.type(key))
    return kind == _text(dst.type(key)) and value_digest(src, key, kind) == value_digest(dst, key, kind)


def copy_keys(
    source: Endpoint,
    target: Endpoint,
    *,
    target_name: str,
    confirm: str,
    batch: int,
    migrate_timeout_ms: int,
    log: LogFn,
) -> CopyOutcome:
    """Copy every key of every database of the scratch server ``source`` into ``target``.

    Keys ``target`` holds with the same value are left alone (a rerun copies nothing
    again); keys it holds with another value are replaced only when ``confirm`` names
    ``target_name``, else RestoreRefused before one key is written. A target without one
    of the source's database numbers is refused before any write, too. Afterwards every
    written key (1 in 16 by name when there are many) is read back and compared.
    """
    secret = target.password
    out = CopyOutcome()
    with redis_client(source) as probe:
        out.databases = sorted(int(db) for db in _keyspace(probe.info("keyspace")))
    work: dict[int, dict[str, Any]] = {}
    conflicts: list[str] = []
    for db in out.databases:
        with redis_client(source, db) as src, redis_client(target, db) as dst:
            try:
                dst.ping()
            except redis.ResponseError as exc:
                raise RestoreRefused(
                    f"Redis {target_name!r} has no database {db} ({exc}); the backup holds keys in databases "
                    f"{out.databases}: raise its 'databases' setting; nothing was written"
                ) from None
            keys = sorted(set(src.scan_iter(count=1000)))
            with_ttl: set[bytes] = set()
            absent, differ = [], []
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                with src.pipeline(transaction=False) as pipe:
                    for key in chunk:
                        pipe.pttl(key)
                    ttls = pipe.execute()
                with dst.pipeline(transaction=False) as pipe:
                    for key in chunk:
                        pipe.exists(key)
                    present = pipe.execute()
                for key, pttl, there in zip(chunk, ttls, present, strict=True):
                    if int(pttl) >= 0:
                        with_ttl.add(key)
                    if not there:
                        absent.append(key)
                    elif _same_value(src, dst, key):
                        out.same += 1
                    else:
                        differ.append(key)
                        conflicts.append(f"{db}:{_text(key)}")
            work[db] = {"absent": absent, "differ": differ, "ttl": with_ttl}
    if conflicts:
        confirm_overwrite(
            target=target_name,
            reason=f"{len(conflicts)} key(s) of the backup exist in {target_name!r} with other values "
            f"(e.g. {', '.join(conflicts[:5])}); nothing was written",
            confirm=confirm,
        )
    auth = ["AUTH2", target.login or "default", secret] if secret else []
    vanished: list[str] = []
    for db, planned in work.items():
        # MIGRATE moves keys of the connection's selected database: one client per database
        with (
            redis_client(source, db, timeout=migrate_timeout_ms / 1000 + 30) as src,
            redis_client(target, db) as dst,
        ):
            for kind, replace in (("absent", False), ("differ", True)):
                todo = planned[kind]
                for start in range(0, len(todo), batch):
                    chunk = todo[start : start + batch]
                    argv = ["MIGRATE", target.host, target.port, "", db, migrate_timeout_ms, "COPY"]
                    argv += ["REPLACE"] if replace else []
                    try:
                        reply = src.execute_command(*argv, *auth, "KEYS", *chunk)
                    except redis.RedisError as exc:
                        raise RestoreFailed(
                            f"MIGRATE into {target_name} db {db} failed after {out.copied + out.replaced} key(s): "
                            f"{_redact(str(exc), secret)}"
                        ) from None
                    # NOKEY (none of the keys) or a partial copy: find the keys the target lacks
                    with dst.pipeline(transaction=False) as pipe:
                        for key in chunk:
                            pipe.exists(key)
                        landed = pipe.execute()
                    lacking = [key for key, there in zip(chunk, landed, strict=True) if not there]
                    if lacking:
                        for key in lacking:
                            # a key that had a TTL and is gone (or all but gone: the copy expires at the
                            # same instant) from the scratch server expired: nothing else removes one
                            left = int(src.pttl(key))
                            if key in planned["ttl"] and (left == -2 or 0 <= left < 1000):
                                out.expired += 1
                            else:
                                vanished.append(f"{db}:{_text(key)}")
                        if vanished:
                            answer = _text(reply) if isinstance(reply, bytes) else reply
                            raise RestoreFailed(
                                f"MIGRATE into {target_name} db {db} answered {answer} but {len(vanished)} "
                                f"key(s) did not arrive (e.g. {', '.join(vanished[:5])}) "
                                f"after {out.copied + out.replaced} key(s) were copied"
                            )
                    done = len(chunk) - len(lacking)
                    if replace:
                        out.replaced += done
                    else:
                        out.copied += done
    log(
        f"redis: copied {out.copied} key(s) into {target_name} (databases {out.databases}), replaced "
        f"{out.replaced}, {out.same} already there with the same value, {out.expired} expired meanwhile"
    )
    if out.expired:
        out.notes.append(f"{out.expired} key(s) with a TTL expired in the scratch server before they were copied")
    # read back what was written
    for db, planned in work.items():
        written = planned["absent"] + planned["differ"]
        if len(written) >= SAMPLE_ALL_BELOW:
            written = [k for k in written if hashlib.sha1(k).hexdigest().startswith("0")]
        with redis_client(source, db) as src, redis_client(target, db) as dst:
            for key in written:
                kind = _text(src.type(key))
                if kind == "none":
                    continue  # expired meanwhile
                src_ttl, dst_ttl = int(src.pttl(key)), int(dst.pttl(key))
                if dst_ttl == -2 and 0 <= src_ttl < 1000:
                    continue  # the copy expired, the original is about to
                out.checked += 1
                if value_digest(src, key, kind) != value_digest(dst, key, kind):
                    out.differences.append(f"key {db}:{_text(key)}: the copy in {target_name} differs from the backup")
                elif (src_ttl >= 0) != (dst_ttl >= 0) and dst_ttl != -2:
                    out.differences.append(
                        f"key {db}:{_text(key)}: TTL {dst_ttl} ms in {target_name}, {src_ttl} ms in the backup"
                    )
    out.notes.append(f"{out.checked} copied key(s) read back from {target_name} and compared")
    return out


# --------------------------------------------------------------------------- restore


def restore_redis(
    backup: Backup,
    target_endpoint: Endpoint,
    *,
    target: str,
    live: bool,
    confirm: str,
    port: int | None,
    scratch_dir: Path | None,
    batch: int = 100,
    migrate_timeout_ms: int = 60_000,
    log: LogFn,
) -> dict[str, Any]:
    """Copy a (verified) RDB backup's keys into a running Redis (see the module docstring).

    The loaded RDB is compared with the backup's description first, then copied with
    :func:`copy_keys`. The scratch server speaks plain TCP, so a TLS target is refused
    (:func:`plan_redis`). A target with ``maxmemory`` and an eviction policy (the
    platform's allkeys-lru) may evict other keys to make room: restore into a live cache
    knowing that.
    """
    plan_redis(target, live=live, tls=bool((target_endpoint.extra or {}).get("ssl")), confirm=confirm)
    expected = source_description(backup)
    started = time.monotonic()
    with _Scratch(backup, port=port, scratch_dir=scratch_dir, prefix="dbops_restore_redis_", log=log) as scratch:
        loaded = _describe_like(scratch.endpoint, expected, log)
        differences, notes = compare_redis(expected, loaded)
        outcome = copy_keys(
            scratch.endpoint,
            target_endpoint,
            target_name=target,
            confirm=confirm,
            batch=batch,
            migrate_timeout_ms=migrate_timeout_ms,
            log=log,
        )
    if not outcome.databases:
        notes.append("the backup holds no keys")
    return finish(
        {
            "store": "redis",
            "backup_id": backup.backup_id,
            "source": None,
            "target": target,
            "already": outcome.copied == 0 and outcome.replaced == 0 and outcome.same > 0,
            "replaced": outcome.replaced > 0,
            "databases": outcome.databases,
            "copied_keys": outcome.copied,
            "replaced_keys": outcome.replaced,
            "unchanged_keys": outcome.same,
            "expired_keys": outcome.expired,
            "seconds": round(time.monotonic() - started, 3),
            "differences": differences + outcome.differences,
            "notes": notes + outcome.notes,
        },
        log,
    )


# --------------------------------------------------------------------------- drill


def drill_redis(
    *,
    port: int | None,
    scratch_dir: Path | None,
    batch: int = 100,
    migrate_timeout_ms: int = 60_000,
    log: LogFn,
    after_copy: Callable[[ScratchRedis], None] | None = None,
) -> Callable[[Backup, DrillComparison], None]:
    """The restore path, into scratch: load the RDB into scratch server A, copy it with
    :func:`copy_keys` into an empty scratch server B, compare A with the backup's
    description and B with A; stop both and remove their folders.

    With ``port`` A listens on it and B on the next one; None: free ports. ``after_copy``
    runs on B right after the copy (tests use it to change the copy).
    """

    def drill(backup: Backup, found: DrillComparison) -> None:
        expected = source_description(backup)
        second = None if port is None else port + 1
        with (
            _Scratch(backup, port=port, scratch_dir=scratch_dir, prefix=DRILL_PREFIX + "redis_a_", log=log) as loaded,
            ScratchCopy(None, port=second, scratch_dir=scratch_dir, prefix=DRILL_PREFIX + "redis_b_", log=log) as copy,
        ):
            described = _describe_like(loaded.endpoint, expected, log)
            differences, notes = compare_redis(expected, described)
            found.differences += [f"loaded RDB: {d}" for d in differences]
            found.notes += notes
            outcome = copy_keys(
                loaded.endpoint,
                copy.endpoint,
                target_name="the drill's copy",
                confirm="",
                batch=batch,
                migrate_timeout_ms=migrate_timeout_ms,
                log=log,
            )
            found.differences += outcome.differences
            found.notes += outcome.notes
            if after_copy is not None:
                after_copy(copy)
            copied = _describe_like(copy.endpoint, described, log)
        differences, notes = compare_redis(described, copied)
        found.differences += [f"copy: {d}" for d in differences]
        found.notes += [f"copy: {n}" for n in notes]
        total = sum(described["matched"].values())
        found.notes.append(
            f"{total} keys in databases {outcome.databases} loaded by a scratch redis-server and copied with "
            f"MIGRATE into a second one ({outcome.copied} copied, {outcome.expired} expired meanwhile)"
        )
        if not total:
            found.notes.append("the backup holds no keys")

    return drill
