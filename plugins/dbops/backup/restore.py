"""Restoring backups and restore drills: the steps every store shares (no Airflow import).

A restore or a drill always goes the same way:

1. **resolve** the backup: ``"latest"`` is the newest *verified* backup of the series; an
   exact id must be in the repository's id format (``YYYYMMDDTHHMMSSZ[-N]``), checked
   before any path is built from it (``../../etc`` never reaches the file system);
2. **verify** its files again (every sha256 against the manifest): a corrupted backup is
   refused, whatever its sidecars said last week;
3. **check the target** and the confirm rule (see :func:`confirm_overwrite`): restoring over
   something that exists, or over the live Redis, needs ``confirm_overwrite`` to name the
   target exactly; refused before anything is written;
4. **restore** with the store's tool (``pg_restore -j``, ``mongorestore --nsFrom/--nsTo``,
   a scratch ``redis-server`` + ``MIGRATE ... COPY``, topics recreated from definitions);
5. **compare** the result with the live store's description recorded right after the dump
   (``source_description.json`` in the backup).

A drill (:func:`run_drill`) does 2, 4 and 5 into scratch targets named ``dbops_drill_...``,
records ``{ok, differences, target, seconds}`` as the backup's ``drill`` sidecar (a failed
drill makes the backup count as not verified, so retention keeps older good ones), and
removes its scratch targets afterwards, also when it failed.

What a comparison tolerates, and why:

- **Mongo TTL collections**: restored documents keep their old timestamps and the TTL
  monitor removes the expired ones from the restored copy too. A TTL collection with
  fewer documents than the source is a note, not a mismatch, *provided* mongorestore
  restored exactly as many documents as the archive holds (that count is checked).
- **Redis keys with a TTL** that are absent: they expired after the backup (Redis drops
  expired keys when it loads an RDB). Keys without a TTL must all be there, equal.
- **Kafka**: topics that already existed are compared and reported, never altered.

Everything else that differs is a mismatch and is named.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbops.backup.adapter import (  # noqa: F401  (re-exported: the recovery vocabulary)
    DrillComparison,
    DrillEnvironmentError,
    NotRetryable,
    RestoreFailed,
    RestorePlan,
    RestoreRefused,
    RestoreRequest,
)
from dbops.backup.repository import (
    Backup,
    BackupRepository,
    CheckResult,
    check_store_name,
    check_subject_name,
    parse_backup_id,
)
from dbops.backup.runner import source_description

LogFn = Callable[[str], None]

LATEST = "latest"
# What the DAG's Param accepts (the JSON schema pattern); check_backup_id is the real check.
BACKUP_ID_PATTERN = r"^(latest|[0-9]{8}T[0-9]{6}Z(-[1-9][0-9]*)?)$"
DRILL_PREFIX = "dbops_drill_"
GLOBALS_SUBJECT = "_globals"
PG_MAX_NAME_BYTES = 63
PG_PROTECTED = frozenset({"postgres", "template0", "template1"})
MONGO_MAX_NAME = 63
MONGO_SYSTEM = frozenset({"admin", "local", "config"})
# a MongoDB database name mongod accepts (and that cannot smuggle a pattern into --nsFrom/--nsTo)
_MONGO_NAME = re.compile(r'^[^/\\. "$*<>:|?]{1,63}$')
# The collection a Mongo restore leaves in its target to say which backup it holds.
MONGO_MARKER = "_dbops_restore"
PG_MARKER_PREFIX = "dbops-restore "
_KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_CONN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")


class CorruptBackup(NotRetryable, RuntimeError):
    """The backup's files no longer match its manifest (``checks`` says which)."""

    def __init__(self, message: str, checks: list[CheckResult]) -> None:
        super().__init__(message)
        self.checks = checks


# --------------------------------------------------------------------------- names and rules


def check_backup_id(backup_id: Any) -> str:
    """``"latest"`` or a canonical backup id; RestoreRefused for anything else (before any I/O)."""
    if backup_id == LATEST:
        return LATEST
    try:
        parse_backup_id(backup_id)
    except ValueError:
        raise RestoreRefused(
            f"backup_id {backup_id!r} is neither 'latest' nor a backup id: expected YYYYMMDDTHHMMSSZ[-N] "
            "(e.g. 20260301T020000Z), as listed in the backup repository"
        ) from None
    return backup_id


def series_label(store: str, subject: str | None) -> str:
    return f"{store}/{subject}" if subject else store


def _fit(head: str, tail: str, limit: int) -> str:
    """``head + tail`` within ``limit`` bytes; a long head is cut and given a short hash."""
    name = head + tail
    if len(name.encode()) <= limit:
        return name
    digest = hashlib.sha1(head.encode()).hexdigest()[:8]
    room = limit - len(tail.encode()) - len(digest) - 1
    cut = head.encode()[:room].decode(errors="ignore")
    return f"{cut}_{digest}{tail}"


def default_target(database: str, backup_id: str) -> str:
    """``<database>_restored_<backupid-lowercase>``; refused when longer than a name may be."""
    name = f"{database}_restored_{backup_id.lower()}"
    if len(name.encode()) > PG_MAX_NAME_BYTES:
        raise RestoreRefused(
            f"the default target name {name!r} is longer than {PG_MAX_NAME_BYTES} bytes; give a shorter target"
        )
    return name


def drill_name(subject: str, backup_id: str) -> str:
    """The scratch database of a drill: ``dbops_drill_<subject>_<backupid-lowercase>`` (<= 63 bytes)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", subject)
    return _fit(f"{DRILL_PREFIX}{safe}", f"_{backup_id.lower()}", PG_MAX_NAME_BYTES)


def drill_topic(topic: str, backup_id: str) -> str:
    """The scratch topic a Kafka drill recreates ``topic`` as (<= 249 characters)."""
    head = f"{DRILL_PREFIX}{backup_id.lower()}_"
    if len(head) + len(topic) <= 249:
        return head + topic
    digest = hashlib.sha1(topic.encode()).hexdigest()[:8]
    return f"{head}{topic[: 249 - len(head) - len(digest) - 1]}_{digest}"


def check_pg_target(name: str) -> str:
    if not isinstance(name, str) or not name or "\x00" in name:
        raise RestoreRefused(f"target {name!r} is not a PostgreSQL database name")
    if len(name.encode()) > PG_MAX_NAME_BYTES:
        raise RestoreRefused(f"target {name!r} is longer than {PG_MAX_NAME_BYTES} bytes (PostgreSQL would cut it)")
    if name in PG_PROTECTED:
        raise RestoreRefused(f"{name!r} is never a restore target")
    if name.startswith(DRILL_PREFIX):
        raise RestoreRefused(f"names starting with {DRILL_PREFIX!r} belong to restore drills; choose another target")
    return name


def check_mongo_name(name: str, what: str = "target") -> str:
    if not isinstance(name, str) or not _MONGO_NAME.match(name):
        raise RestoreRefused(f"{what} {name!r} is not a MongoDB database name (1-63 characters, none of /\\. \"$*<>:|?)")
    if name in MONGO_SYSTEM:
        raise RestoreRefused(f"{what} {name!r} is a system database")
    if what == "target" and name.startswith(DRILL_PREFIX):
        raise RestoreRefused(f"names starting with {DRILL_PREFIX!r} belong to restore drills; choose another target")
    return name


def confirm_overwrite(*, target: str, reason: str | None, confirm: str) -> bool:
    """Whether overwriting ``target`` is confirmed; RestoreRefused when it must be and is not.

    ``reason`` says what would be overwritten ("database x exists", "the live Redis"), or
    None when nothing is. ``confirm`` must then equal ``target`` exactly. A non-empty
    ``confirm`` naming anything else is refused in every case: it shows the operator
    meant another target than the one this run would write to.
    """
    confirm = confirm or ""
    if confirm and confirm != target:
        raise RestoreRefused(
            f"confirm_overwrite is {confirm!r} but the target is {target!r}: it must name the target exactly "
            "(or stay empty when nothing is overwritten)"
        )
    if reason and confirm != target:
        raise RestoreRefused(
            f"{reason}, and restoring would overwrite it. To do that on purpose, set "
            f"confirm_overwrite to {target!r} (exactly); or restore into a new target"
        )
    return confirm == target


def check_request(
    *,
    store: str,
    backup_id: Any,
    database: str = "",
    target: str = "",
    confirm: str = "",
    topics: Any = (),
    accept_unsafe_version: bool = False,
) -> RestoreRequest:
    """The Params that can be judged without I/O and without knowing the store; RestoreRefused
    naming the first bad one. The store's own rules follow in its adapter's ``check_request``."""
    from dbops.stores.registry import STORES

    if store not in STORES:
        raise RestoreRefused(f"store {store!r} is not one of {', '.join(STORES)}")
    backup_id = check_backup_id(backup_id)
    database, target, confirm = (v or "" for v in (database, target, confirm))
    for name, value in (("database", database), ("target", target), ("confirm_overwrite", confirm)):
        if not isinstance(value, str):
            raise RestoreRefused(f"{name} must be a string, got {value!r}")
    topics = tuple(topics or ())
    if topics and store != "kafka":
        raise RestoreRefused("topics applies to store kafka only")
    if any(not isinstance(t, str) for t in topics):
        raise RestoreRefused(f"topics must be strings, got {list(topics)}")
    return RestoreRequest(store, backup_id, database, target, confirm, topics, bool(accept_unsafe_version))


# --------------------------------------------------------------------------- the backup


def resolve_backup(repo: BackupRepository, store: str, subject: str | None, backup_id: str) -> Backup:
    """The backup to restore: the newest verified one for ``"latest"``, else exactly ``backup_id``.

    The id is checked first; nothing on disk is looked at for a malformed one.
    """
    backup_id = check_backup_id(backup_id)
    try:
        check_store_name(store)
        check_subject_name(subject)
    except ValueError as exc:
        raise RestoreRefused(str(exc)) from None
    where = series_label(store, subject)
    backups = repo.list(store, subject)
    if backup_id == LATEST:
        verified = [b for b in backups if b.verified]
        if verified:
            return verified[-1]
        if not backups:
            raise RestoreRefused(f"no backups of {where} in {repo.root}")
        newest = backups[-1]
        raise RestoreRefused(
            f"no verified backup of {where}: {len(backups)} backup(s), none verified "
            f"(newest {newest.backup_id}: {why_unverified(newest)})"
        )
    for backup in backups:
        if backup.backup_id == backup_id:
            return backup
    listed = ", ".join(b.backup_id for b in backups[-5:]) or "none"
    raise RestoreRefused(f"no backup {backup_id} of {where} in {repo.root} (newest: {listed})")


def why_unverified(backup: Backup) -> str:
    last = backup.last_verification()
    if last is None:
        return "verified"
    if last.get("ok") is True:
        return f"last {last.get('kind')} ok at {last.get('at')}"
    detail = last.get("differences") or last.get("detail") or ""
    if isinstance(detail, list):
        detail = "; ".join(str(d) for d in detail[:3])
    return f"{last.get('kind')} failed at {last.get('at')}: {detail}"


def verify_files(repo: BackupRepository, backup: Backup, log: LogFn) -> list[CheckResult]:
    """Every file's size and sha256 against the manifest again; CorruptBackup if any differs."""
    started = time.monotonic()
    checks = repo.verify(backup)
    failed = [c for c in checks if not c["ok"]]
    where = f"{series_label(backup.store, backup.subject)}/{backup.backup_id}"
    if failed:
        detail = "; ".join(f"{c['name']}: {c['detail']}" for c in failed[:10])
        raise CorruptBackup(f"backup {where} is corrupted, refusing to restore it: {detail}", checks)
    summary = next((c["detail"] for c in checks if c["name"] == "files"), "")
    log(f"verified {where} again: {summary} ({time.monotonic() - started:.1f}s)")
    return checks


def restore_marker(store: str, source: str | None, backup_id: str) -> str:
    return f"{PG_MARKER_PREFIX}{store}/{source or ''}/{backup_id}"


def restore_summary(result: dict[str, Any]) -> str:
    what = f"{result['store']} backup {result['backup_id']}"
    if result.get("source"):
        what += f" of {result['source']}"
    if result.get("already"):
        head = f"{result['target']} already holds {what}: nothing restored again"
    else:
        head = f"restored {what} into {result['target']} in {result['seconds']:.1f}s"
    if result["differences"]:
        return f"{head}; {len(result['differences'])} difference(s) from the source"
    return f"{head}; equal to the source as described at backup time"


def finish(result: dict[str, Any], log: LogFn) -> dict[str, Any]:
    result["summary"] = restore_summary(result)
    for note in result.get("notes", []):
        log(f"note: {note}")
    for difference in result["differences"]:
        log(f"DIFFERENCE: {difference}")
    log(result["summary"])
    return result


# --------------------------------------------------------------------------- comparisons


def compare_postgres(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Row counts and sampled-row checksums per table (vector columns included), extensions."""
    from dbops.stores.postgres.backup import describe_differences

    return describe_differences(expected, actual)


_ROLE = r'(?P<name>"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_CREATE_ROLE = re.compile(rf"^CREATE ROLE {_ROLE};$", re.MULTILINE)
_ALTER_ROLE = re.compile(rf"^ALTER ROLE {_ROLE} WITH (?P<attrs>.*);$", re.MULTILINE)


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


def roles_in_globals(text: str) -> dict[str, dict[str, bool]]:
    """Role -> superuser / can_login, as ``pg_dumpall --globals-only`` wrote them."""
    roles: dict[str, dict[str, bool]] = {}
    for match in _CREATE_ROLE.finditer(text):
        roles[_unquote(match.group("name"))] = {"superuser": False, "can_login": False}
    for match in _ALTER_ROLE.finditer(text):
        name = _unquote(match.group("name"))
        words = match.group("attrs").split(" PASSWORD ", 1)[0].split()
        if name in roles:
            roles[name] = {"superuser": "SUPERUSER" in words, "can_login": "LOGIN" in words}
    return roles


def compare_roles(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    want, got = expected.get("roles", {}), actual
    problems = [f"role {r} missing" for r in sorted(set(want) - set(got))]
    problems += [f"role {r} unexpected" for r in sorted(set(got) - set(want))]
    for role in sorted(set(want) & set(got)):
        for key in ("superuser", "can_login"):
            if bool(want[role].get(key)) != bool(got[role].get(key)):
                problems.append(f"role {role}: {key} {got[role].get(key)}, the source had {want[role].get(key)}")
    return problems


def _ttl_collection(description: Mapping[str, Any]) -> bool:
    return any(ix.get("expireAfterSeconds") is not None for ix in description.get("indexes", []))


def compare_mongo(
    expected: dict[str, Any],
    actual: dict[str, Any],
    *,
    dumped: int | None = None,
    restored: int | None = None,
) -> tuple[list[str], list[str]]:
    """(differences, notes) between two descriptions of one database (see the module docstring).

    ``dumped``: documents of this database in the archive (mongodump's counts);
    ``restored``: what mongorestore reported. They must be equal.
    """
    from dbops.stores.mongo.backup import compare_databases

    notes: list[str] = []
    problems: list[str] = []
    if dumped is not None and restored is not None and dumped != restored:
        problems.append(f"mongorestore restored {restored} documents, the archive holds {dumped}")
    want = expected.get("collections", {})
    adjusted = {}
    for name, got in actual.get("collections", {}).items():
        if name == MONGO_MARKER:
            continue
        exp = want.get(name)
        if (
            exp is not None
            and "count" in exp
            and "count" in got
            and _ttl_collection(exp)
            and got["count"] < exp["count"]
            and got.get("indexes") == exp.get("indexes")
            and not problems
            and dumped is not None
        ):
            notes.append(
                f"collection {name}: {exp['count'] - got['count']} document(s) already removed by its TTL index "
                "(they expire in a restored copy too; all of them were restored)"
            )
            got = {**got, "count": exp["count"], "sample": exp.get("sample")}
        adjusted[name] = got
    return problems + compare_databases(expected, {"collections": adjusted}), notes


def compare_redis(expected: dict[str, Any], actual: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(differences, notes) between two ``RedisBackup.describe`` results (source, restored copy)."""
    want, got = expected.get("keys", {}), actual.get("keys", {})
    sampled = expected.get("sample") != "all"
    notes: list[str] = []
    missing = sorted(set(want) - set(got))
    expired = [k for k in missing if want[k].get("expires")]
    if expired:
        notes.append(
            f"{len(expired)} key(s) with a TTL are absent, expired since the backup "
            f"(e.g. {', '.join(expired[:3])})"
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


# --------------------------------------------------------------------------- PostgreSQL


def _pg_state(endpoint, database: str) -> tuple[bool, str | None, int]:
    """(exists, comment, other sessions) of a database."""
    from dbops.sqlfiles import load_sql
    from dbops.stores.postgres.backup import pg_connect

    with pg_connect(endpoint, "postgres", autocommit=True) as admin:
        row = admin.execute(load_sql("restore/pg_database_marker.sql"), [database]).fetchone()
        if row is None:
            return False, None, 0
        sessions = admin.execute(load_sql("restore/pg_connected_elsewhere.sql"), [database]).fetchone()
    return True, row[0], int(sessions[0]) if sessions else 0


def plan_postgres(endpoint, backup: Backup, *, target: str, confirm: str) -> dict[str, Any]:
    """What restoring ``backup`` into ``target`` would do; refuses an unconfirmed overwrite."""
    check_pg_target(target)
    exists, comment, sessions = _pg_state(endpoint, target)
    already = exists and comment == restore_marker("postgres", backup.subject, backup.backup_id)
    reason = None
    if exists and not already:
        live = " (the live database of this backup)" if target == backup.subject else ""
        reason = f"database {target!r} exists{live} with {sessions} other session(s) connected"
    confirmed = confirm_overwrite(target=target, reason=reason, confirm=confirm)
    return {"target": target, "exists": exists, "already": already, "overwrite": exists and confirmed and not already}


def restore_postgres(endpoint, backup: Backup, *, target: str, confirm: str, jobs: int, log: LogFn) -> dict[str, Any]:
    """``pg_restore -j`` of a (verified) backup into ``target``, marked with the backup it holds;
    then compared with the source's description. A target already marked with this backup
    is described and compared, not restored again."""
    import psycopg
    from psycopg import sql

    from dbops.sqlfiles import load_sql
    from dbops.stores.postgres.backup import describe_database, pg_connect, restore_database

    plan = plan_postgres(endpoint, backup, target=target, confirm=confirm)
    expected = source_description(backup)
    sample_rows = int(expected.get("sample_rows", 1000))
    started = time.monotonic()
    if plan["already"]:
        log(f"{target} already holds postgres/{backup.subject}/{backup.backup_id} (its marker says so): not restored twice")
        description = describe_database(endpoint, target, sample_rows=sample_rows, log=log)
    else:
        if plan["overwrite"]:
            log(f"confirm_overwrite names {target!r}: the restored copy is built beside it, then replaces it")
        outcome = restore_database(
            endpoint, backup.path, target, jobs=jobs, replace=plan["overwrite"], describe=True,
            sample_rows=sample_rows, log=log,
        )  # fmt: skip
        description = outcome.description
        with pg_connect(endpoint, "postgres", autocommit=True) as admin:
            try:
                admin.execute(
                    sql.SQL(load_sql("restore/pg_mark_database.sql")).format(
                        database=sql.Identifier(target),
                        comment=sql.Literal(restore_marker("postgres", backup.subject, backup.backup_id)),
                    )
                )
            except psycopg.Error as exc:  # the data is there; only a rerun would not recognise it
                log(f"could not mark {target} with the backup it holds: {exc}")
    return finish(
        {
            "store": "postgres",
            "backup_id": backup.backup_id,
            "source": backup.subject,
            "target": target,
            "already": plan["already"],
            "replaced": plan["overwrite"],
            "seconds": round(time.monotonic() - started, 3),
            "tables": len(description["tables"]),
            "rows": sum(t["rows"] for t in description["tables"].values()),
            "differences": compare_postgres(expected, description),
            "notes": [],
        },
        log,
    )


def _drop_pg(endpoint, database: str, log: LogFn) -> None:
    from psycopg import sql

    from dbops.sqlfiles import load_sql
    from dbops.stores.postgres.backup import pg_connect

    if not database.startswith(DRILL_PREFIX):  # never drop anything a drill did not make
        raise ValueError(f"refusing to drop {database!r}: not a drill database")
    with pg_connect(endpoint, "postgres", autocommit=True) as admin:
        admin.execute(sql.SQL(load_sql("backup/pg_drop_database.sql")).format(database=sql.Identifier(database)))
    log(f"dropped scratch database {database} (if it existed)")


# --------------------------------------------------------------------------- MongoDB


def mongo_source_database(backup: Backup, database: str) -> str:
    """The database of the backup to restore: ``database``, or the backup's only one."""
    held = list((backup.manifest.get("details") or {}).get("databases") or [])
    if not database:
        if len(held) == 1:
            return held[0]
        raise RestoreRefused(f"backup {backup.backup_id} holds databases {held}: name one in database")
    if database not in held:
        raise RestoreRefused(f"database {database!r} is not in backup {backup.backup_id} (it holds {held})")
    return check_mongo_name(database, "database")


def _mongo_state(endpoint, target: str) -> tuple[list[str], dict[str, Any] | None]:
    from dbops.stores.mongo.backup import client

    with client(endpoint) as mongo:
        names = [n for n in mongo[target].list_collection_names() if not n.startswith("system.")]
        marker = mongo[target][MONGO_MARKER].find_one({"_id": "restore"}) if MONGO_MARKER in names else None
    return sorted(n for n in names if n != MONGO_MARKER), marker


def plan_mongo(endpoint, backup: Backup, *, database: str, target: str, confirm: str) -> dict[str, Any]:
    check_mongo_name(target)
    collections, marker = _mongo_state(endpoint, target)
    already = bool(marker) and marker.get("backup") == restore_marker("mongo", database, backup.backup_id)
    reason = None
    if collections and not already:
        live = " (the live database of this backup)" if target == database else ""
        reason = f"database {target!r}{live} has collections {collections[:5]}"
    if target == database and not collections:
        reason = f"{target!r} is the live database of this backup"
    confirmed = confirm_overwrite(target=target, reason=reason, confirm=confirm)
    return {"target": target, "exists": bool(collections), "already": already, "overwrite": confirmed and not already}


def _dumped_documents(backup: Backup, database: str) -> int | None:
    counts = (backup.manifest.get("details") or {}).get("collections")
    if not isinstance(counts, dict):
        return None
    return sum(int(n) for ns, n in counts.items() if ns.startswith(f"{database}."))


def restore_mongo(endpoint, backup: Backup, *, database: str, target: str, confirm: str, log: LogFn) -> dict[str, Any]:
    """``mongorestore --nsFrom database.* --nsTo target.*`` of a (verified) backup, compared with
    the source's description; the target gets a ``_dbops_restore`` marker collection (not
    on a confirmed restore over the live database)."""
    from dbops.stores.mongo.backup import client, describe_database, restore

    plan = plan_mongo(endpoint, backup, database=database, target=target, confirm=confirm)
    expected_all = source_description(backup).get("databases", {})
    if database not in expected_all:
        raise RestoreRefused(f"the backup's source description has no database {database!r}")
    expected = expected_all[database]
    dumped = _dumped_documents(backup, database)
    started = time.monotonic()
    restored = None
    if plan["already"]:
        log(f"{target} already holds mongo/{database}/{backup.backup_id} (its {MONGO_MARKER} says so): not restored twice")
        with client(endpoint) as mongo:
            description = describe_database(mongo[target])
    else:
        outcome = restore(endpoint, backup.path, from_db=database, to_db=target, drop=plan["overwrite"], log=log)
        restored, description = outcome["documents_restored"], outcome["target"]
        if target != database:
            with client(endpoint) as mongo:
                mongo[target][MONGO_MARKER].replace_one(
                    {"_id": "restore"},
                    {"_id": "restore", "backup": restore_marker("mongo", database, backup.backup_id), "at": time.time()},
                    upsert=True,
                )
    differences, notes = compare_mongo(expected, description, dumped=dumped, restored=restored)
    return finish(
        {
            "store": "mongo",
            "backup_id": backup.backup_id,
            "source": database,
            "target": target,
            "already": plan["already"],
            "replaced": plan["overwrite"],
            "documents_restored": restored,
            "seconds": round(time.monotonic() - started, 3),
            "differences": differences,
            "notes": notes,
        },
        log,
    )


def _drop_mongo(endpoint, database: str, log: LogFn) -> None:
    from dbops.stores.mongo.backup import client

    if not database.startswith(DRILL_PREFIX):
        raise ValueError(f"refusing to drop {database!r}: not a drill database")
    with client(endpoint) as mongo:
        mongo.drop_database(database)
    log(f"dropped scratch database {database} (if it existed)")


# --------------------------------------------------------------------------- Redis


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Scratch:
    """A scratch redis-server loaded from a backup's RDB; stopped and its folder removed on exit."""

    def __init__(self, backup: Backup, *, port: int | None, scratch_dir: Path | None, prefix: str, log: LogFn) -> None:
        self.backup, self.port, self.scratch_dir, self.prefix, self.log = backup, port, scratch_dir, prefix, log
        self.server = None
        self.workdir: Path | None = None

    def __enter__(self):
        from dbops.stores.redis.backup import RDB_FILE, restore_into_scratch

        if self.scratch_dir is not None:
            Path(self.scratch_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self.scratch_dir))
        try:
            self.server = restore_into_scratch(
                self.backup.path / RDB_FILE, port=self.port or free_port(), workdir=self.workdir, log=self.log
            )
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        return self.server

    def __exit__(self, *exc: object) -> None:
        try:
            if self.server is not None:
                self.server.stop()
                self.log(f"stopped scratch redis-server (pid {self.server.pid})")
        finally:
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode("utf-8", "backslashreplace")


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


def restore_redis(
    backup: Backup,
    target_endpoint,
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
    """Copy a (verified) RDB backup's keys into a running Redis.

    Redis loads an RDB only at start-up, so the RDB is loaded into a scratch
    ``redis-server`` on 127.0.0.1, and its keys are copied into the target with
    ``MIGRATE host port "" db timeout COPY [REPLACE] AUTH2 user password KEYS ...``: the
    server's own DUMP/RESTORE, values and TTLs exact, the password sent in the command
    (the protocol), never on a command line. Keys the target already holds with the same
    value are left alone (a rerun copies nothing again); keys it holds with another value
    are only replaced with ``confirm_overwrite`` naming the target, otherwise the restore
    is refused before one key is written. Keys of the target that are not in the backup
    are never touched. Afterwards every copied key (or a 1-in-16 sample of many) is read
    back from the target and compared with the scratch copy.

    Why MIGRATE from a scratch server, and its limits: it is Redis's own copy of a key
    (DUMP + RESTORE with the TTL, any type, modules included), done server to server in
    batches, so nothing is re-encoded by dbops; the restored keys keep their database
    number. The scratch server speaks plain TCP, so a TLS target is refused (plan_redis).
    A target with ``maxmemory`` and an eviction policy (the platform's allkeys-lru) may
    evict other keys to make room: restore into a live cache knowing that.
    """
    from dbops.stores.redis.bootstrap import backup as rb

    plan = plan_redis(target, live=live, tls=bool((target_endpoint.extra or {}).get("ssl")), confirm=confirm)
    expected = source_description(backup)
    started = time.monotonic()
    secret = target_endpoint.password
    with _Scratch(backup, port=port, scratch_dir=scratch_dir, prefix="dbops_restore_redis_", log=log) as scratch:
        restored = rb.RedisBackup(scratch.endpoint).describe(log, match=expected.get("match"))
        differences, notes = compare_redis(expected, restored)
        with rb.redis_client(scratch.endpoint) as probe:
            dbs = sorted(int(name[2:]) for name in probe.info("keyspace") if name.startswith("db"))
        work: dict[int, dict[str, list[bytes]]] = {}
        same = 0
        conflicts: list[str] = []
        for db in dbs:
            with rb.redis_client(scratch.endpoint, db) as src, rb.redis_client(target_endpoint, db) as dst:
                keys = sorted(set(src.scan_iter(count=1000)))
                absent, differ = [], []
                for start in range(0, len(keys), 500):
                    chunk = keys[start : start + 500]
                    with dst.pipeline(transaction=False) as pipe:
                        for key in chunk:
                            pipe.exists(key)
                        present = pipe.execute()
                    for key, there in zip(chunk, present, strict=True):
                        if not there:
                            absent.append(key)
                            continue
                        kind = _text(src.type(key))
                        if kind == _text(dst.type(key)) and rb.value_digest(src, key, kind) == rb.value_digest(dst, key, kind):
                            same += 1
                        else:
                            differ.append(key)
                            conflicts.append(f"{db}:{_text(key)}")
                work[db] = {"absent": absent, "differ": differ}
        if conflicts and not plan["confirmed"]:
            confirm_overwrite(
                target=target,
                reason=f"{len(conflicts)} key(s) of the backup exist in {target!r} with other values "
                f"(e.g. {', '.join(conflicts[:5])}); nothing was written",
                confirm=confirm,
            )
        copied = replaced = 0
        auth = ["AUTH2", target_endpoint.login or "default", secret] if secret else []
        with rb.redis_client(scratch.endpoint, timeout=migrate_timeout_ms / 1000 + 30) as src:
            for db, keys in work.items():
                for kind, replace in (("absent", False), ("differ", True)):
                    todo = keys[kind]
                    for start in range(0, len(todo), batch):
                        chunk = todo[start : start + batch]
                        argv = ["MIGRATE", target_endpoint.host, target_endpoint.port, "", db, migrate_timeout_ms, "COPY"]
                        argv += ["REPLACE"] if replace else []
                        try:
                            src.execute_command(*argv, *auth, "KEYS", *chunk)
                        except rb.redis.RedisError as exc:
                            raise RestoreFailed(
                                f"MIGRATE into {target} db {db} failed after {copied + replaced} key(s): "
                                f"{_redact(str(exc), secret)}"
                            ) from None
                        if replace:
                            replaced += len(chunk)
                        else:
                            copied += len(chunk)
        log(f"redis: copied {copied} key(s) into {target}, replaced {replaced}, {same} already there with the same value")
        # read back what was written
        checked = 0
        for db, keys in work.items():
            written = keys["absent"] + keys["differ"]
            if len(written) >= rb.SAMPLE_ALL_BELOW:
                written = [k for k in written if hashlib.sha1(k).hexdigest().startswith("0")]
            with rb.redis_client(scratch.endpoint, db) as src, rb.redis_client(target_endpoint, db) as dst:
                for key in written:
                    kind = _text(src.type(key))
                    if kind == "none":
                        continue  # expired meanwhile
                    checked += 1
                    if rb.value_digest(src, key, kind) != rb.value_digest(dst, key, kind):
                        differences.append(f"key {db}:{_text(key)}: the copy in {target} differs from the backup")
        notes.append(f"{checked} copied key(s) read back from {target} and compared")
    already = copied == 0 and replaced == 0 and same > 0
    return finish(
        {
            "store": "redis",
            "backup_id": backup.backup_id,
            "source": None,
            "target": target,
            "already": already,
            "replaced": replaced > 0,
            "copied_keys": copied,
            "replaced_keys": replaced,
            "unchanged_keys": same,
            "seconds": round(time.monotonic() - started, 3),
            "differences": differences,
            "notes": notes,
        },
        log,
    )


# --------------------------------------------------------------------------- Kafka


def plan_kafka(backup: Backup, *, topics: tuple[str, ...] | list[str], target: str, confirm: str) -> dict[str, Any]:
    from dbops.stores.kafka.backup import TOPICS_FILE, is_internal, load_file

    document = load_file(backup.path, TOPICS_FILE, "topics_file")
    held = sorted(t for t in document["topics"] if not is_internal(t))
    unknown = sorted(set(topics) - set(document["topics"]))
    if unknown:
        raise RestoreRefused(f"topics {unknown} are not in backup {backup.backup_id} (it holds {held[:20]})")
    confirmed = confirm_overwrite(target=target, reason=None, confirm=confirm)
    return {"topics": sorted(topics) if topics else held, "offsets": confirmed}


def restore_kafka(
    admin, backup: Backup, *, topics: tuple[str, ...] | list[str], target: str, confirm: str, timeout: float, log: LogFn
) -> dict[str, Any]:
    """Recreate the backup's missing topics (all, or ``topics``) under their own names with
    their partitions and configs; existing ones are compared and reported, never altered.
    Consumer group offsets are set (on idle groups only) when ``confirm_overwrite`` names
    the Kafka connection, else only reported."""
    from dbops.stores.kafka.backup import compare_topics, restore_offsets, restore_topics, topic_definitions

    plan = plan_kafka(backup, topics=topics, target=target, confirm=confirm)
    selected = plan["topics"]
    topic_map = {t: t for t in selected} if topics else None
    started = time.monotonic()
    report = restore_topics(admin, backup.path, topic_map=topic_map, log=log, timeout=timeout)
    created = {c.target.removeprefix("topic ") for c in report.changes if c.action == "create"}
    differences = [f"{c.target}: {c.detail}" for c in report.problems if c.action == "missing"]
    notes = [f"{c.target}: {c.detail}" for c in report.changes if c.action == "drift"]
    offsets = restore_offsets(admin, backup.path, topic_map=topic_map, dry_run=not plan["offsets"], log=log, timeout=timeout)
    if not plan["offsets"] and offsets.modified:
        notes.append(
            f"consumer group offsets not set ({len(offsets.modified)} group(s) would change): set "
            f"confirm_overwrite to {target!r} to set them on idle groups"
        )
    notes += [f"{c.target}: {c.detail}" for c in offsets.problems]
    expected = source_description(backup).get("topics", {})
    actual = topic_definitions(admin, timeout, include_internal=True, names=sorted(created))
    differences += compare_topics({t: expected[t] for t in created if t in expected}, actual)
    return finish(
        {
            "store": "kafka",
            "backup_id": backup.backup_id,
            "source": None,
            "target": target,
            "already": not created and not differences and bool(selected),
            "replaced": False,
            "created_topics": sorted(created),
            "unchanged_topics": sorted(c.target.removeprefix("topic ") for c in report.changes if c.action == "unchanged"),
            "offsets": offsets.to_dict()["changes"],
            "seconds": round(time.monotonic() - started, 3),
            "differences": differences,
            "notes": notes,
        },
        log,
    )


def _delete_topics(admin, names: list[str], timeout: float, log: LogFn) -> list[str]:
    """Delete drill topics that exist; returns those that could not be deleted."""
    from dbops.stores.kafka.bootstrap import _wait, describe_topics

    doomed = [n for n in names if n.startswith(DRILL_PREFIX) and n in describe_topics(admin, timeout)]
    if not doomed:
        return []
    outcome = _wait(admin.delete_topics(doomed, operation_timeout=timeout, request_timeout=timeout), timeout)
    failed = [f"{name}: {exc}" for name, exc in outcome.items() if exc is not None]
    log(f"deleted {len(doomed) - len(failed)} scratch topic(s)" + (f"; not deleted: {failed}" if failed else ""))
    return failed


# --------------------------------------------------------------------------- Weaviate


def restore_weaviate(
    session, base_url: str, backup: Backup, *, timeout: float, poll_every: float = 5.0, log: LogFn
) -> dict[str, Any]:
    """Weaviate's own restore API for the backup this record names. Weaviate restores only
    classes that do not exist: existing ones are refused (dbops never deletes a class)."""
    from dbops.stores.weaviate.bootstrap import WeaviateError, _check, current_classes
    from dbops.stores.weaviate.backup import RECORD_FILE, WeaviateBackup

    record = json.loads((backup.path / RECORD_FILE).read_text())
    wid, backend, classes = record["id"], record["backend"], sorted(record["classes"])
    base = base_url.rstrip("/")
    status_url = f"{base}/v1/backups/{backend}/{wid}/restore"
    existing = sorted(set(current_classes(session, base)) & set(classes))
    started = time.monotonic()
    already = False
    if existing:
        try:
            status = _check(session.get(status_url, timeout=60), "restore status")
        except WeaviateError:
            status = None
        already = existing == classes and bool(status) and status.get("status") == "SUCCESS"
        if not already:
            raise RestoreRefused(
                f"Weaviate classes {existing} exist: Weaviate restores only classes that do not exist. "
                "Delete them on purpose (after saving what they hold), or restore on another Weaviate"
            )
        log(f"weaviate backup {wid} was already restored (classes {classes} exist, restore status SUCCESS)")
    else:
        _check(session.post(f"{base}/v1/backups/{backend}/{wid}/restore", json={"include": classes}, timeout=60), "restore")
        deadline = time.monotonic() + timeout
        while True:
            status = _check(session.get(status_url, timeout=60), "restore status") or {}
            state = status.get("status")
            log(f"weaviate restore of {wid}: {state}")
            if state == "SUCCESS":
                break
            if state == "FAILED":
                raise RestoreFailed(f"Weaviate restore of {wid} failed: {status.get('error')}")
            if time.monotonic() > deadline:
                raise RestoreFailed(f"Weaviate restore of {wid} not finished after {timeout:.0f}s (last: {state})")
            time.sleep(poll_every)
    counts = WeaviateBackup(session, base).counts(classes)
    want = source_description(backup).get("counts", {})
    differences = [
        f"class {name}: {counts.get(name)} objects, the source had {want.get(name)}"
        for name in classes
        if name in want and counts.get(name) != want.get(name)
    ]
    return finish(
        {
            "store": "weaviate",
            "backup_id": backup.backup_id,
            "source": None,
            "target": base,
            "already": already,
            "replaced": False,
            "classes": classes,
            "seconds": round(time.monotonic() - started, 3),
            "differences": differences,
            "notes": [],
        },
        log,
    )


# --------------------------------------------------------------------------- drills


def _cleanup(comparison: DrillComparison, what: str, action: Callable[[], Any], log: LogFn) -> None:
    try:
        action()
    except Exception as exc:  # keep the drill's own result; say what is left behind
        comparison.leftovers.append(f"{what}: {type(exc).__name__}: {exc}")
        log(f"could not remove scratch {what}: {exc}")


_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left for the drill's scratch copy",
    errno.EDQUOT: "the drill's scratch copy hit a disk quota",
    errno.EADDRINUSE: "the drill's port is in use",
    errno.EACCES: "the drill may not write its scratch folder",
}


def _environment_problem(exc: BaseException) -> str | None:
    """Why ``exc`` is the drill environment's fault (disk, port, permissions), or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _ENVIRONMENT_ERRNOS:
            return _ENVIRONMENT_ERRNOS[seen.errno]
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    if "No space left on device" in text:
        return _ENVIRONMENT_ERRNOS[errno.ENOSPC]
    return None


def run_drill(
    repo: BackupRepository,
    backup: Backup,
    *,
    target: str | list[str] | None,
    drill: Callable[[Backup, DrillComparison], None],
    run_id: str,
    dag_id: str,
    log: LogFn,
) -> dict[str, Any]:
    """Verify the files, restore into scratch and compare (``drill``), record the ``drill``
    sidecar ``{ok, differences, target, seconds, ...}`` and return it.

    A failure after the backup was chosen counts against the backup (``ok`` false): a
    corrupted file, a restore that fails, a difference. A failure of the drill's
    environment (DrillEnvironmentError from the adapter; a full disk, a port in use) is
    not a verdict: nothing is recorded and the error goes up. The sidecar makes the backup count
    as not verified until a later drill passes; scratch targets are removed by ``drill``
    itself (in ``finally``), and what it could not remove is reported as ``leftovers``.
    """
    started = time.monotonic()
    comparison = DrillComparison()
    where = f"{series_label(backup.store, backup.subject)}/{backup.backup_id}"
    try:
        verify_files(repo, backup, log)
        drill(backup, comparison)
    except CorruptBackup as exc:
        comparison.differences += [f"corrupted: {c['name']}: {c['detail']}" for c in exc.checks if not c["ok"]]
    except DrillEnvironmentError:
        raise  # no verdict: the backup's record stays as it was
    except Exception as exc:
        environment = _environment_problem(exc)
        if environment:
            raise DrillEnvironmentError(f"{environment}: {type(exc).__name__}: {exc}") from exc
        comparison.differences.append(f"restore failed: {type(exc).__name__}: {exc}")
    result = {
        "ok": not comparison.differences,
        "differences": comparison.differences,
        "target": target,
        "seconds": round(time.monotonic() - started, 3),
        "notes": comparison.notes,
        "leftovers": comparison.leftovers,
        "backup_id": backup.backup_id,
        "series": series_label(backup.store, backup.subject),
        "run_id": run_id,
        "dag_id": dag_id,
    }
    repo.record(backup, "drill", result)
    verdict = "passed" if result["ok"] else f"FAILED with {len(comparison.differences)} mismatch(es)"
    log(f"drill of {where} {verdict} in {result['seconds']:.1f}s (recorded in {backup.path / 'drill.json'})")
    for difference in comparison.differences:
        log(f"MISMATCH {where}: {difference}")
    return result


def drill_postgres(endpoint, *, target: str, jobs: int, log: LogFn) -> Callable[[Backup, DrillComparison], None]:
    """pg_restore into scratch database ``target`` (owned by the restoring role), compare, drop it."""
    from dbops.stores.postgres.backup import restore_database

    def drill(backup: Backup, found: DrillComparison) -> None:
        expected = source_description(backup)
        _drop_pg(endpoint, target, log)  # left by a killed drill
        try:
            outcome = restore_database(
                endpoint, backup.path, target, jobs=jobs, no_owner=True, describe=True,
                sample_rows=int(expected.get("sample_rows", 1000)), log=log,
            )  # fmt: skip
            found.differences += compare_postgres(expected, outcome.description)
            rows = sum(t["rows"] for t in outcome.description["tables"].values())
            found.notes.append(f"{len(outcome.description['tables'])} tables, {rows} rows restored in {outcome.seconds:.1f}s")
        finally:
            _cleanup(found, f"database {target}", lambda: _drop_pg(endpoint, target, log), log)

    return drill


def drill_postgres_globals(log: LogFn) -> Callable[[Backup, DrillComparison], None]:
    """Roles are cluster-wide, so there is no scratch target for them: the roles (and their
    superuser and login attributes) in ``globals.sql`` are compared with the source's."""
    from dbops.stores.postgres.backup import GLOBALS_FILE

    def drill(backup: Backup, found: DrillComparison) -> None:
        text = (backup.path / GLOBALS_FILE).read_text(encoding="utf-8")
        roles = roles_in_globals(text)
        found.differences += compare_roles(source_description(backup), roles)
        found.notes.append(f"{len(roles)} roles in {GLOBALS_FILE} (read, not applied: roles are cluster-wide)")
        log(f"globals: {len(roles)} roles parsed from {GLOBALS_FILE}")

    return drill


def drill_mongo(endpoint, *, targets: dict[str, str], log: LogFn) -> Callable[[Backup, DrillComparison], None]:
    """mongorestore each database of the backup into its scratch database, compare, drop it."""
    from dbops.stores.mongo.backup import restore

    def drill(backup: Backup, found: DrillComparison) -> None:
        expected_all = source_description(backup).get("databases", {})
        for database, target in targets.items():
            _drop_mongo(endpoint, target, log)
            try:
                outcome = restore(endpoint, backup.path, from_db=database, to_db=target, log=log)
                differences, notes = compare_mongo(
                    expected_all.get(database, {"collections": {}}), outcome["target"],
                    dumped=_dumped_documents(backup, database), restored=outcome["documents_restored"],
                )  # fmt: skip
                found.differences += [f"{database}: {d}" for d in differences]
                found.notes += [f"{database}: {n}" for n in notes]
                found.notes.append(f"{database}: {outcome['documents_restored']} documents restored into {target}")
            finally:
                _cleanup(found, f"database {target}", lambda t=target: _drop_mongo(endpoint, t, log), log)

    return drill


def drill_redis(*, port: int | None, scratch_dir: Path | None, log: LogFn) -> Callable[[Backup, DrillComparison], None]:
    """Load the RDB into a scratch redis-server, describe it, compare, stop it and remove its folder."""
    from dbops.stores.redis.backup import RedisBackup

    def drill(backup: Backup, found: DrillComparison) -> None:
        expected = source_description(backup)
        with _Scratch(backup, port=port, scratch_dir=scratch_dir, prefix=DRILL_PREFIX + "redis_", log=log) as scratch:
            restored = RedisBackup(scratch.endpoint).describe(log, match=expected.get("match"))
        differences, notes = compare_redis(expected, restored)
        found.differences += differences
        found.notes += notes
        found.notes.append(f"{sum(restored['matched'].values())} keys loaded by a scratch redis-server")

    return drill


def drill_kafka(admin_factory: Callable[[], Any], *, timeout: float, log: LogFn) -> Callable[[Backup, DrillComparison], None]:
    """Recreate every topic of the backup as ``dbops_drill_<id>_<topic>``, compare, delete them."""
    from dbops.stores.kafka.backup import TOPICS_FILE, compare_topics, is_internal, load_file, restore_topics, topic_definitions

    def drill(backup: Backup, found: DrillComparison) -> None:
        admin = admin_factory()
        expected = {t: d for t, d in source_description(backup).get("topics", {}).items() if not is_internal(t)}
        held = [t for t in load_file(backup.path, TOPICS_FILE, "topics_file")["topics"] if not is_internal(t)]
        topic_map = {t: drill_topic(t, backup.backup_id) for t in sorted(held)}
        if not topic_map:
            found.notes.append("the backup holds no topics")
        _delete_topics(admin, list(topic_map.values()), timeout, log)
        try:
            report = restore_topics(admin, backup.path, topic_map=topic_map, log=log, timeout=timeout)
            found.differences += [f"{c.target}: {c.detail}" for c in report.problems]
            actual = topic_definitions(admin, timeout, names=list(topic_map.values()))
            found.differences += compare_topics(expected, actual, topic_map=topic_map)
            missing_source = sorted(set(held) - set(expected))
            found.differences += [f"topic {t} is in the backup but not in the source description" for t in missing_source]
            found.notes.append(f"{len(topic_map)} topics recreated as {DRILL_PREFIX}{backup.backup_id.lower()}_*")
        finally:
            _cleanup(
                found, "drill topics",
                lambda: _raise_if(_delete_topics(admin, list(topic_map.values()), timeout, log)), log,
            )  # fmt: skip

    return drill


def _raise_if(failed: list[str]) -> None:
    if failed:
        raise RuntimeError("; ".join(failed))
