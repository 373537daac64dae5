"""MongoDB restore, comparison and drill (no Airflow import).

The reference is always the backup's own description (``source_description.json``), which
:meth:`dbops.stores.mongo.backup.MongoBackup.dump` computed *from the archive*: per
collection the document count, an order-independent digest of every document's raw BSON,
and the index specs of the archive's metadata; per database its users and roles. A writer
busy during mongodump therefore cannot make a restore or a drill fail, while one changed
document in the restored copy still does (its bytes change the digest).

A restore never works in the target itself. It restores into a scratch database beside it
(``<target>_dbops_new_<token>``), compares that copy with the description, and only then
swaps: the target's existing collections are moved aside, whole, into
``<target>_dbops_old_<token>`` (``renameCollection`` across databases), and the restored
ones moved in. A restore that fails or differs leaves the target untouched; a swap that
fails half-way moves everything back.

What a comparison tolerates, and why: a **TTL collection** with fewer documents than the
archive is a note, not a mismatch, *provided* mongorestore restored exactly as many
documents as the archive holds: restored documents keep their old timestamps and the TTL
monitor removes the expired ones from the restored copy too.

What this cannot do: the archive's oplog is not replayed into a single-database restore
(``mongorestore --oplogReplay`` works on whole-instance restores only, and SecantusDB has no
``applyOps``): the restored database holds the documents as mongodump read them, which is
what the description describes. Users and roles are recorded and compared with what the
archive holds; a server that keeps them outside ``admin.system.users`` (SecantusDB) leaves
them out of the archive, which is said in the drill's notes.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from dbops.backup.adapter import (
    DrillComparison,
    DrillEnvironmentError,
    Endpoint,
    LogFn,
    RestoreFailed,
    RestorePlan,
    RestoreRefused,
    RestoreRequest,
)
from dbops.backup.repository import Backup
from dbops.backup.restore import (
    DRILL_PREFIX,
    _cleanup,
    confirm_overwrite,
    default_target,
    finish,
    restore_marker,
)
from dbops.backup.runner import source_description

MONGO_MAX_NAME = 63
MONGO_SYSTEM = frozenset({"admin", "local", "config"})
# a MongoDB database name mongod accepts (and that cannot smuggle a pattern into --nsFrom/--nsTo)
_MONGO_NAME = re.compile(r'^[^/\\. "$*<>:|?]{1,63}$')
# The collection a Mongo restore leaves in its target to say which backup it holds.
MONGO_MARKER = "_dbops_restore"
# scratch databases of a restore: the restored copy before the swap, and the old collections after it
STAGED_INFIX = "_dbops_new_"
ASIDE_INFIX = "_dbops_old_"


# --------------------------------------------------------------------------- names


def check_mongo_name(name: str, what: str = "target") -> str:
    if not isinstance(name, str) or not _MONGO_NAME.match(name):
        raise RestoreRefused(f'{what} {name!r} is not a MongoDB database name (1-63 characters, none of /\\. "$*<>:|?)')
    if name in MONGO_SYSTEM:
        raise RestoreRefused(f"{what} {name!r} is a system database")
    if what == "target" and name.startswith(DRILL_PREFIX):
        raise RestoreRefused(f"names starting with {DRILL_PREFIX!r} belong to restore drills; choose another target")
    if what == "target" and (STAGED_INFIX in name or ASIDE_INFIX in name):
        raise RestoreRefused(f"target {name!r} looks like a restore's scratch database ({STAGED_INFIX}, {ASIDE_INFIX})")
    return name


def check_request(request: RestoreRequest) -> None:
    """The Mongo Params, judged without I/O."""
    for name, value in (("database", request.database), ("target", request.target)):
        if value and not isinstance(value, str):
            raise RestoreRefused(f"{name} must be a string, got {value!r}")
    if request.database:
        check_mongo_name(request.database, "database")
    if request.target:
        check_mongo_name(request.target)
    if request.topics:
        raise RestoreRefused("topics applies to store kafka only")


def side_name(target: str, infix: str, token: str) -> str:
    """``<target><infix><token>`` within 63 bytes (a long target is cut and given a hash)."""
    tail = f"{infix}{token}"
    name = target + tail
    if len(name.encode()) <= MONGO_MAX_NAME:
        return name
    digest = hashlib.sha1(target.encode()).hexdigest()[:8]
    room = MONGO_MAX_NAME - len(tail.encode()) - len(digest) - 1
    return f"{target.encode()[:room].decode(errors='ignore')}_{digest}{tail}"


def mongo_source_database(backup: Backup, database: str, default: str | None = None) -> str:
    """The database of the backup to restore: ``database``; else ``default`` (the configured
    database) when the backup holds it; else the backup's only one."""
    held = list((backup.manifest.get("details") or {}).get("databases") or [])
    if not database:
        if default and default in held:
            return default
        if len(held) == 1:
            return held[0]
        raise RestoreRefused(f"backup {backup.backup_id} holds databases {held}: name one in database")
    if database not in held:
        raise RestoreRefused(f"database {database!r} is not in backup {backup.backup_id} (it holds {held})")
    return check_mongo_name(database, "database")


# --------------------------------------------------------------------------- comparison


def _ttl_collection(description: Mapping[str, Any]) -> bool:
    return any(ix.get("expireAfterSeconds") is not None for ix in description.get("indexes", []))


def compare_mongo(
    expected: dict[str, Any],
    actual: dict[str, Any],
    *,
    dumped: int | None = None,
    restored: int | None = None,
) -> tuple[list[str], list[str]]:
    """(differences, notes) between the backup's description of one database and a restored
    copy's :func:`~dbops.stores.mongo.backup.describe_database` (collections only).

    ``dumped``: documents of this database in the archive; ``restored``: what mongorestore
    reported. They must be equal.
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
            got = {**got, "count": exp["count"], "digest": exp.get("digest")}
        adjusted[name] = got
    return problems + compare_databases({"collections": want}, {"collections": adjusted}), notes


def compare_security(expected: dict[str, Any], held: dict[str, Any]) -> list[str]:
    """Users and roles of one database: the description's against what the archive holds."""
    problems = []
    for kind, key in (("users", "user"), ("roles", "role")):
        want = {item[key]: item for item in expected.get(kind, [])}
        have = {item[key]: item for item in held.get(kind, [])}
        for name in sorted(set(want) - set(have)):
            problems.append(f"{kind[:-1]} {name} is not in the archive")
        for name in sorted(set(have) - set(want)):
            problems.append(f"{kind[:-1]} {name} is in the archive but not in the description")
        for name in sorted(set(want) & set(have)):
            if want[name] != have[name]:
                problems.append(f"{kind[:-1]} {name}: {have[name]!r}, the description has {want[name]!r}")
    return problems


def check_users_and_roles(backup: Backup, databases: list[str], found: DrillComparison, log: LogFn) -> None:
    """Compare the recorded users and roles with the archive's ``admin.system.users/roles``."""
    from dbops.stores.mongo.backup import ARCHIVE, SECURITY_NAMESPACES, _users_and_roles, verify_archive

    description = source_description(backup)
    expected = description.get("databases", {})
    recorded = {db: expected.get(db, {}) for db in databases}
    counts = ", ".join(
        f"{db}: {len(d.get('users', []))} users, {len(d.get('roles', []))} roles" for db, d in recorded.items()
    )
    if description.get("security_from") == "unreadable":
        found.notes.append("users and roles were not recorded: the backup user may not view them (viewUser, viewRole)")
        return
    if description.get("security_from") != "archive":
        found.notes.append(
            f"users and roles recorded from the server at backup time ({counts}); this server keeps them "
            "outside admin.system.users/roles, so the archive does not hold them and a restore cannot "
            "bring them back: recreate them from source_description.json"
        )
        return
    _, _, summary = verify_archive(backup.path / ARCHIVE, digest=True)
    if summary is None or not any(ns in summary.prelude for ns in SECURITY_NAMESPACES):
        found.differences.append("the description says the archive holds users and roles, it does not")
        return
    users = summary.security.get("admin.system.users", [])
    roles = summary.security.get("admin.system.roles", [])
    for db in databases:
        found.differences += [f"{db}: {p}" for p in compare_security(recorded[db], _users_and_roles(users, roles, db))]
    found.notes.append(f"users and roles in the archive equal the description ({counts})")
    log(f"mongo drill: users and roles compared with the archive ({counts})")


# --------------------------------------------------------------------------- restore


def _collections(db) -> list[str]:
    return sorted(n for n in db.list_collection_names() if not n.startswith("system."))


def _mongo_state(endpoint: Endpoint, target: str) -> tuple[list[str], dict[str, Any] | None]:
    from dbops.stores.mongo.backup import client

    with client(endpoint) as mongo:
        names = _collections(mongo[target])
        marker = mongo[target][MONGO_MARKER].find_one({"_id": "restore"}) if MONGO_MARKER in names else None
    return [n for n in names if n != MONGO_MARKER], marker


def plan_mongo(
    endpoint: Endpoint, backup: Backup, *, database: str, target: str, confirm: str, token: str | None = None
) -> RestorePlan:
    """Every refusal before any work; the actions an operator reads before approving."""
    check_mongo_name(target)
    description = source_description(backup).get("databases", {})
    if database not in description:
        raise RestoreRefused(f"the backup's source description has no database {database!r}")
    collections, marker = _mongo_state(endpoint, target)
    already = marker is not None and marker.get("backup") == restore_marker("mongo", database, backup.backup_id)
    reason = None
    if collections and not already:
        live = " (the live database of this backup)" if target == database else ""
        reason = f"database {target!r}{live} has collections {collections[:5]}"
    if target == database and not collections:
        reason = f"{target!r} is the live database of this backup"
    confirmed = confirm_overwrite(target=target, reason=reason, confirm=confirm)
    token = token or uuid.uuid4().hex[:8]
    staged, aside = side_name(target, STAGED_INFIX, token), side_name(target, ASIDE_INFIX, token)
    if already:
        actions = [
            f"{target} already holds mongo/{database}/{backup.backup_id} (its {MONGO_MARKER} says so): "
            "nothing restored, the copy is compared again"
        ]
    else:
        actions = [
            f"mongorestore {database}.* of backup {backup.backup_id} into scratch database {staged}, "
            "compared with the backup's description (the target is not touched until it matches)",
        ]
        if collections:
            actions.append(
                f"set aside the {len(collections)} existing collection(s) of {target} "
                f"({', '.join(collections[:10])}{', ...' if len(collections) > 10 else ''}) "
                f"by moving them into {aside}: kept, drop it once the restore is accepted"
            )
        actions.append(f"move the restored collections from {staged} into {target}")
        if target != database:
            actions.append(f"record the backup in {target}.{MONGO_MARKER}")
    return RestorePlan(
        store="mongo",
        subject=None,
        backup_id=backup.backup_id,
        source=database,
        target=target,
        exists=bool(collections),
        already=already,
        overwrite=confirmed and not already and bool(collections or target == database),
        actions=actions,
        details={"token": token, "staged": staged, "aside": aside, "collections": collections},
    )


def _dumped_documents(backup: Backup, database: str) -> int | None:
    counts = (backup.manifest.get("details") or {}).get("collections")
    if not isinstance(counts, dict):
        return None
    return sum(int(n) for ns, n in counts.items() if ns.startswith(f"{database}."))


def _rename(mongo, source_db: str, name: str, target_db: str) -> None:
    mongo.admin.command("renameCollection", f"{source_db}.{name}", to=f"{target_db}.{name}")


def swap_in(mongo, *, staged: str, target: str, aside: str, log: LogFn) -> list[str]:
    """Move the target's collections into ``aside``, then the staged ones into the target.

    Returns the collections set aside. On a failure everything moved is moved back (the
    target is as before) and RestoreFailed says so.
    """
    old = _collections(mongo[target])
    new = _collections(mongo[staged])
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        for name in old:
            _rename(mongo, target, name, aside)
            moved_old.append(name)
        for name in new:
            _rename(mongo, staged, name, target)
            moved_new.append(name)
    except Exception as exc:
        undo_errors = []
        for name in reversed(moved_new):
            try:
                _rename(mongo, target, name, staged)
            except Exception as undo:  # say exactly what is where
                undo_errors.append(f"{target}.{name} -> {staged}: {undo}")
        for name in reversed(moved_old):
            try:
                _rename(mongo, aside, name, target)
            except Exception as undo:
                undo_errors.append(f"{aside}.{name} -> {target}: {undo}")
        state = (
            f"{target} is as before"
            if not undo_errors
            else f"could not move back: {'; '.join(undo_errors)} (old collections are in {aside})"
        )
        raise RestoreFailed(
            f"swapping the restored copy into {target} failed ({type(exc).__name__}: {exc}); {state}"
        ) from exc
    if old:
        log(f"mongo restore: set aside {len(old)} collection(s) of {target} in {aside}: {', '.join(old)}")
    log(f"mongo restore: moved {len(new)} restored collection(s) from {staged} into {target}")
    return old


def restore_mongo(endpoint: Endpoint, backup: Backup, plan: RestorePlan, log: LogFn) -> dict[str, Any]:
    """Restore ``plan.source`` of a (verified) backup beside ``plan.target``, compare, swap."""
    from dbops.stores.mongo.backup import client, describe_database, restore

    database, target = plan.source or "", plan.target
    # again: the state may have changed since the plan (a rerun finds its own marker)
    fresh = plan_mongo(
        endpoint,
        backup,
        database=database,
        target=target,
        confirm=target if plan.overwrite else "",
        token=plan.details.get("token"),
    )
    expected = source_description(backup)["databases"][database]
    dumped = _dumped_documents(backup, database)
    started = time.monotonic()
    restored = None
    set_aside: list[str] = []
    staged, aside = fresh.details["staged"], fresh.details["aside"]
    if fresh.already:
        log(
            f"{target} already holds mongo/{database}/{backup.backup_id} "
            f"(its {MONGO_MARKER} says so): not restored twice"
        )
        with client(endpoint) as mongo:
            description = describe_database(mongo[target])
        differences, notes = compare_mongo(expected, description, dumped=dumped, restored=None)
    else:
        with client(endpoint) as mongo:
            mongo.drop_database(staged)  # left by a killed run with the same token
        try:
            outcome = restore(endpoint, backup.path, from_db=database, to_db=staged, log=log)
            restored = outcome["documents_restored"]
            differences, notes = compare_mongo(expected, outcome["target"], dumped=dumped, restored=restored)
            if differences:
                log(f"mongo restore: the restored copy in {staged} differs from the backup: {target} left untouched")
            else:
                with client(endpoint) as mongo:
                    set_aside = swap_in(mongo, staged=staged, target=target, aside=aside, log=log)
                    if target != database:
                        mongo[target][MONGO_MARKER].replace_one(
                            {"_id": "restore"},
                            {
                                "_id": "restore",
                                "backup": restore_marker("mongo", database, backup.backup_id),
                                "at": time.time(),
                            },
                            upsert=True,
                        )
                    # the renames are metadata operations: the same collections, same counts
                    have = {n: mongo[target][n].estimated_document_count() for n in _collections(mongo[target])}
                    for name, body in outcome["target"]["collections"].items():
                        if "count" in body and have.get(name) != body["count"]:
                            differences.append(
                                f"collection {name}: {have.get(name)} documents after the swap, {body['count']} before"
                            )
        finally:
            with client(endpoint) as mongo:
                mongo.drop_database(staged)
    if set_aside:
        notes.append(f"the previous collections of {target} are kept in {aside}: drop it once this restore is accepted")
    return finish(
        {
            "store": "mongo",
            "backup_id": backup.backup_id,
            "source": database,
            "target": target,
            "already": fresh.already,
            "replaced": bool(set_aside),
            "set_aside": aside if set_aside else None,
            "documents_restored": restored,
            "seconds": round(time.monotonic() - started, 3),
            "differences": differences,
            "notes": notes,
        },
        log,
    )


# --------------------------------------------------------------------------- drill


def _drop_mongo(endpoint: Endpoint, database: str, log: LogFn) -> None:
    from dbops.stores.mongo.backup import client

    if not database.startswith(DRILL_PREFIX):
        raise ValueError(f"refusing to drop {database!r}: not a drill database")
    with client(endpoint) as mongo:
        mongo.drop_database(database)
    log(f"dropped scratch database {database} (if it existed)")


def _environment_failure(exc: BaseException) -> bool:
    from pymongo.errors import ConnectionFailure

    if isinstance(exc, ConnectionFailure):  # unreachable, timed out, not primary
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EADDRINUSE)


def drill_mongo(
    endpoint: Endpoint, *, targets: dict[str, str], where: str, log: LogFn
) -> Callable[[Backup, DrillComparison], None]:
    """One mongorestore of the drilled databases into their scratch databases on ``endpoint``,
    compared with the description; the scratch databases are dropped (also on failure)."""
    from dbops.stores.mongo.backup import client, restore_databases

    def drill(backup: Backup, found: DrillComparison) -> None:
        expected_all = source_description(backup).get("databases", {})
        try:
            with client(endpoint) as mongo:
                mongo.admin.command("ping")
        except Exception as exc:
            if _environment_failure(exc):
                raise DrillEnvironmentError(f"the drill's Mongo ({where}) is unreachable: {exc}") from exc
            raise
        try:
            for target in targets.values():
                _drop_mongo(endpoint, target, log)  # left by a killed drill
            outcome = restore_databases(endpoint, backup.path, targets, log=log)
            dumped = {db: _dumped_documents(backup, db) for db in targets}
            total = sum(n or 0 for n in dumped.values())
            if outcome["documents_restored"] != total:
                found.differences.append(
                    f"mongorestore restored {outcome['documents_restored']} documents, "
                    f"the archive holds {total} in {', '.join(targets)}"
                )
            for database, target in targets.items():
                differences, notes = compare_mongo(
                    expected_all.get(database, {"collections": {}}),
                    outcome["targets"][target],
                    dumped=dumped[database],
                    restored=dumped[database],
                )
                if database not in expected_all:
                    differences.append("not in the backup's description")
                found.differences += [f"{database}: {d}" for d in differences]
                found.notes += [f"{database}: {n}" for n in notes]
                collections = outcome["targets"][target]["collections"]
                found.notes.append(
                    f"{database}: {len(collections)} collections, {dumped[database]} documents "
                    f"restored into {target} ({where})"
                )
            check_users_and_roles(backup, list(targets), found, log)
        except Exception as exc:
            if _environment_failure(exc):
                raise DrillEnvironmentError(f"the drill's environment failed ({where}): {exc}") from exc
            raise
        finally:
            for target in targets.values():
                _cleanup(found, f"database {target}", functools.partial(_drop_mongo, endpoint, target, log), log)

    return drill


__all__ = [
    "ASIDE_INFIX",
    "MONGO_MARKER",
    "STAGED_INFIX",
    "check_mongo_name",
    "check_request",
    "compare_mongo",
    "compare_security",
    "default_target",
    "drill_mongo",
    "mongo_source_database",
    "plan_mongo",
    "restore_mongo",
    "side_name",
    "swap_in",
]
