"""PostgreSQL restore, comparison and drills (no Airflow import).

A restore of one database goes: plan (target checked, existing target needs
confirm_overwrite, the sessions an overwrite would end are named), then ``pg_restore -j``
into a new database created from template0 with the source's encoding and locale, the
source's database-level state applied (owner, settings, per-role settings, grants,
comment, connection limit), the copy described and compared with the backup's own
description (read inside the dump's snapshot). For an overwrite the copy is built beside
the live database and checked first; only then are the live database's sessions ended
and it is renamed aside (``<target>_dbops_old_<backupid>``), never dropped. A failed
restore leaves the live database as it was.

A restored database is marked with the setting ``dbops.restored_from`` (not its comment,
which is the source's), so a rerun reports it instead of restoring twice and the nightly
backup leaves it out; comparisons ignore ``dbops.*`` settings.

A drill restores into a scratch database ``dbops_drill_...`` (on the drill cluster when one
is configured), compares, and drops it. Roles (``_globals``) are cluster-wide: their drill
reads ``globals.sql`` and compares the roles, it never applies them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

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
    GLOBALS_SUBJECT,
    PG_MAX_NAME_BYTES,
    _cleanup,
    confirm_overwrite,
    finish,
    restore_marker,
)
from dbops.backup.runner import source_description
from dbops.sqlfiles import load_sql
from dbops.stores.postgres.backup import (
    GLOBALS_FILE,
    absent_roles,
    database_sessions,
    describe_database,
    describe_differences,
    pg_connect,
    restore_database,
    session_text,
    set_aside_name,
    state_roles,
)
from dbops.tools import ToolError

PG_PROTECTED = frozenset({"postgres", "template0", "template1"})
MAINTENANCE_DB = "postgres"
# Words of a failure caused by where the drill ran, not by the backup
_ENVIRONMENT_WORDS = (
    "no space left on device",
    "could not extend file",
    "disk quota exceeded",
    "could not connect",
    "connection refused",
    "too many connections",
    "the database system is starting up",
    "the database system is shutting down",
)


# --------------------------------------------------------------------------- names


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


def check_pg_database(name: str) -> str:
    """A source database name as the ``database`` Param gives it (any PostgreSQL name)."""
    if not isinstance(name, str) or not name or "\x00" in name or len(name.encode()) > PG_MAX_NAME_BYTES:
        raise RestoreRefused(f"database {name!r} is not a PostgreSQL database name (1-{PG_MAX_NAME_BYTES} bytes)")
    if name == GLOBALS_SUBJECT:
        raise RestoreRefused(
            "roles (_globals) are cluster-wide: dbops does not change them; an operator applies "
            "globals.sql with psql after reading it"
        )
    return name


def check_request(request: RestoreRequest) -> None:
    """The Postgres Params, judged without I/O; RestoreRefused naming the bad one."""
    if request.database:
        check_pg_database(request.database)
    if request.target:
        check_pg_target(request.target)
    if request.topics:
        raise RestoreRefused("topics applies to store kafka only")


def source_database(backup: Backup) -> str:
    """The real name of the database a backup was taken of (its series may be a slug)."""
    details = backup.manifest.get("details") or {}
    return str(details.get("database") or backup.subject or "")


# --------------------------------------------------------------------------- comparison


_STATE_KEYS = (
    "encoding",
    "collate",
    "ctype",
    "locale_provider",
    "icu_locale",
    "icu_rules",
    "connection_limit",
    "comment",
)


def _grant_set(grants: list[dict[str, Any]] | None, skip: set[str]) -> set[tuple[str, str, bool]] | None:
    if grants is None:
        return None
    return {(g["grantee"], g["privilege"], bool(g["grantable"])) for g in grants if g["grantee"] not in skip}


def compare_database_state(
    expected: dict[str, Any] | None, actual: dict[str, Any] | None, absent: list[str] | tuple[str, ...] = ()
) -> tuple[list[str], list[str]]:
    """(differences, notes) between the source's database-level state and a restored copy's.
    Whatever names a role in ``absent`` (not in the restore's cluster) is a note, not a difference."""
    if not expected:
        return [], ["the backup records no database-level state (taken before dbops recorded it): not compared"]
    if actual is None:
        return ["the restored copy's database-level state could not be read"], []
    problems: list[str] = []
    notes: list[str] = []
    missing = set(absent)
    for key in _STATE_KEYS:
        if expected.get(key) != actual.get(key):
            problems.append(f"database {key}: {actual.get(key)!r}, the source had {expected.get(key)!r}")
    owner = expected.get("owner")
    if owner in missing:
        notes.append(f"database owner {owner!r} not compared: no such role in this cluster")
    elif owner != actual.get("owner"):
        problems.append(f"database owner: {actual.get('owner')!r}, the source had {owner!r}")
    if sorted(expected.get("settings") or []) != sorted(actual.get("settings") or []):
        problems.append(f"database settings: {actual.get('settings')}, the source had {expected.get('settings')}")
    want_roles, got_roles = expected.get("role_settings") or {}, actual.get("role_settings") or {}
    for role in sorted(set(want_roles) | set(got_roles)):
        if role in missing:
            notes.append(f"settings of role {role!r} in the database not compared: no such role in this cluster")
        elif sorted(want_roles.get(role, [])) != sorted(got_roles.get(role, [])):
            problems.append(
                f"settings of role {role} in the database: {got_roles.get(role, [])}, "
                f"the source had {want_roles.get(role, [])}"
            )
    skip = missing | {owner or "", actual.get("owner") or ""}  # owners hold every privilege implicitly
    want_grants, got_grants = _grant_set(expected.get("grants"), skip), _grant_set(actual.get("grants"), skip)
    if want_grants != got_grants:

        def show(grants: set[tuple[str, str, bool]] | None) -> str:
            if grants is None:
                return "the defaults"
            return ", ".join(f"{p} to {g}{' (grantable)' if o else ''}" for g, p, o in sorted(grants)) or "none"

        problems.append(f"database grants: {show(got_grants)}; the source had {show(want_grants)}")
    ungranted = sorted({g["grantee"] for g in expected.get("grants") or [] if g["grantee"] in missing})
    if ungranted:
        notes.append(f"database grants to {ungranted} not compared: no such role(s) in this cluster")
    return problems, notes


def compare_postgres(expected: dict[str, Any], actual: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(differences, notes): row counts and sampled-row checksums per table (vector columns
    included), extensions, and the database-level state (``dbops.*`` settings ignored)."""
    differences = describe_differences(expected, actual)
    state_differences, notes = compare_database_state(
        expected.get("database_state"), actual.get("database_state"), actual.get("absent_roles") or ()
    )
    return differences + state_differences, notes


# --------------------------------------------------------------------------- globals


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
    """Roles of ``globals.sql`` against the backup's description; roles that changed while
    pg_dumpall ran (``changed_during_dump``) may be either way and are not judged."""
    moving = set(expected.get("changed_during_dump", []))
    want = {k: v for k, v in expected.get("roles", {}).items() if k not in moving}
    got = {k: v for k, v in actual.items() if k not in moving}
    problems = [f"role {r} missing" for r in sorted(set(want) - set(got))]
    problems += [f"role {r} unexpected" for r in sorted(set(got) - set(want))]
    for role in sorted(set(want) & set(got)):
        for key in ("superuser", "can_login"):
            if bool(want[role].get(key)) != bool(got[role].get(key)):
                problems.append(f"role {role}: {key} {got[role].get(key)}, the source had {want[role].get(key)}")
    return problems


def drill_postgres_globals(log: LogFn) -> Callable[[Backup, DrillComparison], None]:
    """Roles are cluster-wide, so there is no scratch target for them: the roles (and their
    superuser and login attributes) in ``globals.sql`` are compared with the source's."""

    def drill(backup: Backup, found: DrillComparison) -> None:
        text = (backup.path / GLOBALS_FILE).read_text(encoding="utf-8")
        roles = roles_in_globals(text)
        found.differences += compare_roles(source_description(backup), roles)
        found.notes.append(f"{len(roles)} roles in {GLOBALS_FILE} (read, not applied: roles are cluster-wide)")
        log(f"globals: {len(roles)} roles parsed from {GLOBALS_FILE}")

    return drill


# --------------------------------------------------------------------------- restore


def _pg_state(endpoint: Endpoint, database: str) -> tuple[bool, str | None, list[dict[str, Any]]]:
    """(exists, restore marker, other sessions) of a database."""
    with pg_connect(endpoint, MAINTENANCE_DB, autocommit=True) as admin:
        row = admin.execute(load_sql("restore/pg_restore_marker.sql"), [database]).fetchone()
        if row is None:
            return False, None, []
        return True, row[0], database_sessions(admin, database)


def _free_set_aside_name(endpoint: Endpoint, target: str, backup_id: str) -> str:
    with pg_connect(endpoint, MAINTENANCE_DB, autocommit=True) as admin:
        name, n = set_aside_name(target, backup_id), 1
        while admin.execute(load_sql("backup/pg_database_exists.sql"), [name]).fetchone()[0]:  # type: ignore[index]
            n += 1
            name = set_aside_name(target, f"{backup_id}_{n}")
    return name


def plan_postgres(endpoint: Endpoint, backup: Backup, *, source: str, target: str, confirm: str) -> RestorePlan:
    """What restoring ``backup`` into ``target`` would do; refuses an unconfirmed overwrite.
    No change is made."""
    check_pg_target(target)
    exists, marker, sessions = _pg_state(endpoint, target)
    already = exists and marker == restore_marker("postgres", source, backup.backup_id)
    reason = None
    if exists and not already:
        live = " (the live database of this backup)" if target == source else ""
        reason = f"database {target!r} exists{live} with {len(sessions)} other session(s) connected"
    confirmed = confirm_overwrite(target=target, reason=reason, confirm=confirm)
    overwrite = exists and confirmed and not already
    details: dict[str, Any] = {"sessions": sessions, "marker": marker}
    actions: list[str] = []
    if already:
        actions.append(
            f"{target} already holds postgres/{source}/{backup.backup_id}: compare it again, restore nothing"
        )
    else:
        copy = f"a new database beside {target}" if overwrite else f"database {target}"
        actions.append(f"create {copy} from template0 with the source's encoding and locale")
        actions.append(
            f"pg_restore backup {backup.backup_id} of {source} into it, apply the source's database "
            "settings, grants and comment, compare it with the backup's description"
        )
        if overwrite:
            keep = _free_set_aside_name(endpoint, target, backup.backup_id)
            details["set_aside_as"] = keep
            if sessions:
                actions += [f"end session {session_text(s)} of {target}" for s in sessions]
            else:
                actions.append(f"no session is connected to {target} now (any connected then is ended)")
            actions.append(f"rename the old {target} to {keep} (kept, not dropped), the new copy to {target}")
    return RestorePlan(
        store="postgres",
        subject=backup.subject,
        backup_id=backup.backup_id,
        source=source,
        target=target,
        exists=exists,
        already=already,
        overwrite=overwrite,
        actions=actions,
        details=details,
    )


def _mark(admin: psycopg.Connection, database: str, marker: str) -> None:
    admin.execute(
        sql.SQL(load_sql("restore/pg_set_restore_marker.sql")).format(
            database=sql.Identifier(database), marker=sql.Literal(marker)
        )
    )


def _with_absent_roles(endpoint: Endpoint, description: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    with pg_connect(endpoint, MAINTENANCE_DB, autocommit=True) as admin:
        return {**description, "absent_roles": absent_roles(admin, state_roles(expected.get("database_state")))}


def restore_postgres(endpoint: Endpoint, backup: Backup, plan: RestorePlan, *, jobs: int, log: LogFn) -> dict[str, Any]:
    """``pg_restore -j`` of a (verified) backup as ``plan`` says, marked with the backup it
    holds and compared with the backup's description. A target already marked with this
    backup is described and compared, not restored again. An overwrite raises RestoreFailed
    (the live database untouched) when the copy differs from the backup."""
    target, source = plan.target, plan.source or source_database(backup)
    expected = source_description(backup)
    state = expected.get("database_state")
    sample_rows = int(expected.get("sample_rows", 1000))
    marker = restore_marker("postgres", source, backup.backup_id)
    started = time.monotonic()
    notes: list[str] = []
    set_aside, ended = None, []
    if plan.already:
        log(f"{target} already holds postgres/{source}/{backup.backup_id} (its marker says so): not restored twice")
        description = _with_absent_roles(
            endpoint, describe_database(endpoint, target, sample_rows=sample_rows, log=log), expected
        )
    else:
        if plan.overwrite:
            log(
                f"confirm_overwrite names {target!r}: the restored copy is built beside it, checked, then swapped in; "
                f"the old database is kept as {plan.details.get('set_aside_as')}"
            )
            for session in plan.details.get("sessions") or []:
                log(f"planned: end session {session_text(session)} of {target}")

        def check_copy(copy: str, description: dict[str, Any] | None) -> None:
            """Before the live database is touched: the copy must equal the backup."""
            assert description is not None
            differences, _ = compare_postgres(expected, _with_absent_roles(endpoint, description, expected))
            if differences:
                raise RestoreFailed(
                    f"the restored copy of {source} differs from backup "
                    f"{backup.backup_id}; {target} is left as it was: " + "; ".join(differences[:10])
                )
            with pg_connect(endpoint, MAINTENANCE_DB, autocommit=True) as admin:
                _mark(admin, copy, marker)

        outcome = restore_database(
            endpoint,
            backup.path,
            target,
            jobs=jobs,
            replace=plan.overwrite,
            describe=True,
            sample_rows=sample_rows,
            database_state=state,
            keep_old_as=plan.details.get("set_aside_as"),
            before_swap=check_copy if plan.overwrite else None,
            maintenance_db=MAINTENANCE_DB,
            log=log,
        )
        assert outcome.description is not None
        description = _with_absent_roles(endpoint, outcome.description, expected)
        notes += outcome.notes
        set_aside, ended = outcome.set_aside, outcome.ended_sessions
        if not plan.overwrite:
            with pg_connect(endpoint, MAINTENANCE_DB, autocommit=True) as admin:
                try:
                    _mark(admin, target, marker)
                except psycopg.Error as exc:  # the data is there; only a rerun would not recognise it
                    notes.append(f"could not mark {target} with the backup it holds: {exc}")
    differences, compare_notes = compare_postgres(expected, description)
    return finish(
        {
            "store": "postgres",
            "backup_id": backup.backup_id,
            "source": source,
            "series": backup.subject,
            "target": target,
            "already": plan.already,
            "replaced": plan.overwrite and not plan.already,
            "set_aside": set_aside,
            "ended_sessions": [session_text(s) for s in ended],
            "seconds": round(time.monotonic() - started, 3),
            "tables": len(description["tables"]),
            "rows": sum(t["rows"] for t in description["tables"].values()),
            "differences": differences,
            "notes": notes + compare_notes,
        },
        log,
    )


# --------------------------------------------------------------------------- drill


def _drop_pg(endpoint: Endpoint, database: str, log: LogFn) -> None:
    if not database.startswith(DRILL_PREFIX):  # never drop anything a drill did not make
        raise ValueError(f"refusing to drop {database!r}: not a drill database")
    with pg_connect(endpoint, MAINTENANCE_DB, autocommit=True) as admin:
        admin.execute(sql.SQL(load_sql("backup/pg_drop_database.sql")).format(database=sql.Identifier(database)))
    log(f"dropped scratch database {database} (if it existed)")


def _environment_problem(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(word in text for word in _ENVIRONMENT_WORDS)


def drill_postgres(
    endpoint: Endpoint, *, target: str, jobs: int, where: str, separate_cluster: bool, log: LogFn
) -> Callable[[Backup, DrillComparison], None]:
    """pg_restore into scratch database ``target`` (owned by the restoring role), apply the
    database-level state, compare, drop it. On a separate drill cluster the dump's grants are
    left out (its roles may not exist there). DrillEnvironmentError when the cluster, not the
    backup, stopped the drill."""

    def drill(backup: Backup, found: DrillComparison) -> None:
        expected = source_description(backup)
        try:
            _drop_pg(endpoint, target, log)  # left by a killed drill
        except psycopg.OperationalError as exc:
            raise DrillEnvironmentError(f"the drill cluster {where} cannot be reached: {exc}") from exc
        try:
            outcome = restore_database(
                endpoint,
                backup.path,
                target,
                jobs=jobs,
                no_owner=True,
                no_privileges=separate_cluster,
                analyze=False,  # the scratch copy is compared and dropped: no query plans to help
                describe=True,
                sample_rows=int(expected.get("sample_rows", 1000)),
                database_state=expected.get("database_state"),
                maintenance_db=MAINTENANCE_DB,
                log=log,
            )
            assert outcome.description is not None
            description = _with_absent_roles(endpoint, outcome.description, expected)
            differences, notes = compare_postgres(expected, description)
            found.differences += differences
            found.notes += outcome.notes + notes
            rows = sum(t["rows"] for t in description["tables"].values())
            found.notes.append(
                f"{len(description['tables'])} tables, {rows} rows restored into {target} on {where} "
                f"in {outcome.seconds:.1f}s"
            )
        except (ToolError, psycopg.Error) as exc:
            if isinstance(exc, psycopg.OperationalError) or _environment_problem(exc):
                raise DrillEnvironmentError(f"the drill on {where} was stopped by its environment: {exc}") from exc
            raise
        finally:
            _cleanup(found, f"database {target}", lambda: _drop_pg(endpoint, target, log), log)

    return drill
