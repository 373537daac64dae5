"""The one interface every store implements, for the whole life of a backup (no Airflow import).

A store adapter (``dbops.stores.<store>.adapter``, registered once in
:mod:`dbops.registry`) knows one store's standard tools. It

- names the **series** a nightly backup writes (Postgres: one per database plus
  ``_globals``; the others: one, ``None``) and gives a :class:`SeriesBackup` for each, which
  writes a dump into a staging folder *together with the reference a drill compares
  with* (:attr:`DumpResult.description`: described inside the dump's own snapshot, or
  from the artifact itself, never from a later read of the live store), and checks a
  written dump with the tool's own means;
- **plans** a restore (every check that can refuse, before any work) and **restores**;
- **compares** a restored copy with the backup's description;
- **drills** a backup into scratch targets and removes them.

The repository (manifest, sha256, atomic rename, retention), resolving a backup id,
re-verifying files, the overwrite-confirmation rule and recording a drill are generic:
they live in :mod:`dbops.backup` and are not an adapter's business.

Credentials arrive in an :class:`Endpoint` and reach the tools only through the
environment or 0600 files that are removed afterwards: never argv, never a log line.
Adapters reach the Airflow connections only through the :class:`Links` they are given
(the task layer passes :mod:`dbops.runtime`), so nothing below the tasks imports Airflow.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # typing only: the core stays import-light
    from dbops.backup.repository import Backup
    from dbops.config import DbopsConfig

LogFn = Callable[[str], None]


@dataclass(frozen=True)
class Endpoint:
    """Where a store is and how to log in (built by the Airflow layer from a connection)."""

    host: str
    port: int
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    database: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # never show the password, whatever prints this
        return f"Endpoint({self.login or ''}@{self.host}:{self.port}/{self.database or ''})"


@dataclass(frozen=True)
class DumpResult:
    tool: str  # e.g. "pg_dump"
    tool_version: str
    server_version: str
    compression: str  # e.g. "gzip:6", "zstd:3", "none"
    details: dict[str, Any] = field(default_factory=dict)  # store-specific facts for the manifest
    # What a drill and a restore compare with: the backup's own content, described in the
    # dump's snapshot or read from the artifact (written as source_description.json).
    description: dict[str, Any] = field(default_factory=dict)
    # Files the dump already read back whole after the tool finished (path in the backup ->
    # sha256): the seal compares its own digest with these instead of reading them again.
    read_back: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


class SeriesBackup(Protocol):
    """Backs up one series (a Postgres database, the whole Redis, ...)."""

    store: str

    def dump(self, staging: Path, log: LogFn) -> DumpResult:
        """Write the backup's files into ``staging`` (an empty folder); the result carries
        the description of exactly what was dumped."""

    def check(self, backup_dir: Path, manifest: dict[str, Any], log: LogFn) -> list[Check]:
        """Tool-level check of a written backup (pg_restore --list, redis-check-rdb, ...)."""


# --------------------------------------------------------------------------- recovery


class NotRetryable(Exception):
    """An error a retry cannot cure (a refusal, a bad name, a checksum mismatch): the task
    fails at once instead of holding the DAG's only run slot through its retries."""


class RestoreRefused(NotRetryable, ValueError):
    """Refused before any work: the message says why and what to do instead."""


class BackupRefused(NotRetryable, ValueError):
    """A backup that cannot be taken as asked (a database that does not exist, a bad name)."""


class RestoreFailed(RuntimeError):
    """A restore ran and did not give what it should (the message names every difference)."""


class ExpiryRefused(Exception):
    """The store cannot remove what a backup keeps outside the repository (e.g. a Weaviate
    backup on a backend dbops cannot reach): retention keeps the backup's record, saying why."""


class StoreNotConfigured(Exception):
    """The store has no connection here (e.g. no Weaviate): its tasks skip, saying so."""


class DrillEnvironmentError(RuntimeError):
    """The drill could not be carried out because of its environment (a port in use, a full
    disk, a scratch cluster that is down): an error of the drill, not a verdict on the backup."""


@dataclass(frozen=True)
class RestoreRequest:
    """The restore DAG's Params, checked for shape (no I/O)."""

    store: str
    backup_id: str
    database: str = ""
    target: str = ""
    confirm: str = ""
    topics: tuple[str, ...] = ()
    # Weaviate <= 1.23.12 can corrupt data on restore (Weaviate's own warning): refused unless set
    accept_unsafe_version: bool = False


@dataclass
class RestorePlan:
    """What a restore will do, decided (and every refusal raised) before any work.

    ``actions`` are the lines an operator reads before approving: what is created, what is
    replaced and set aside, which sessions end. ``details`` is store-specific and JSON-able:
    the plan travels from the ``plan`` task to the restore task as XCom.
    """

    store: str
    subject: str | None  # the backup series
    backup_id: str
    source: str | None  # the source database inside the backup, where that means something
    target: str
    exists: bool = False  # the target already holds something
    already: bool = False  # the target already holds exactly this backup (a rerun)
    overwrite: bool = False  # confirmed: existing data will be replaced (and set aside where the store can)
    actions: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RestorePlan:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class DrillComparison:
    """What a store's drill found: mismatches, notes, and scratch targets it could not remove."""

    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)


class Links(Protocol):
    """How an adapter reaches the stores: Airflow connections, resolved by the task layer."""

    def endpoint(self, conn_id: str, store: str) -> Endpoint: ...

    def connection_exists(self, conn_id: str) -> bool: ...

    def kafka_admin(self, conn_id: str) -> Any: ...

    def weaviate(self, conn_id: str) -> AbstractContextManager[Any]: ...

    def s3_client(self, conn_id: str) -> Any: ...


class StoreAdapter(Protocol):
    """One store, for the whole life of a backup. Built as ``Adapter(config, links)``."""

    store: str
    drillable: bool  # False where the store has no scratch target (Weaviate)

    def __init__(self, config: DbopsConfig, links: Links) -> None: ...

    # backup
    def series(self, log: LogFn) -> list[str | None]:
        """The series the nightly backup writes now (None: the store's only series)."""

    def series_backup(self, subject: str | None) -> SeriesBackup:
        """The backup of one series."""

    def expire(self, backup: Backup, log: LogFn) -> None:
        """Remove what ``backup`` keeps outside the repository (Weaviate's copy in its backend)
        before retention deletes its folder; nothing for stores whose backup is all in the folder."""

    # restore
    def check_request(self, request: RestoreRequest) -> None:
        """Store-specific checks of the Params, without I/O; RestoreRefused naming the bad one."""

    def restore_subject(self, request: RestoreRequest) -> str | None:
        """The series a restore request reads from."""

    def plan_restore(self, backup: Backup, request: RestoreRequest, log: LogFn) -> RestorePlan:
        """Every check that can refuse, with I/O (target state, confirmation); no change made."""

    def restore(self, backup: Backup, plan: RestorePlan, log: LogFn) -> dict[str, Any]:
        """Restore as planned; returns the result (see :func:`dbops.backup.restore.finish`),
        whose ``differences`` compare the restored copy with the backup's description."""

    def compare(self, expected: dict[str, Any], actual: dict[str, Any]) -> tuple[list[str], list[str]]:
        """(differences, notes) between the backup's description and a restored copy's."""

    # drill
    def drill_target(self, backup: Backup) -> str | list[str]:
        """Where a drill of ``backup`` restores to (for the record and the log)."""

    def drill(self, backup: Backup, found: DrillComparison, log: LogFn) -> None:
        """Restore ``backup`` into scratch targets, compare, remove them (also on failure).
        Raises DrillEnvironmentError when the environment, not the backup, stopped it."""


class SingleSeriesAdapter:
    """What a store backed up as one series (the whole store) shares: the constructor, its
    one series, no restore subject, nothing kept outside the repository. Subclasses set
    ``store`` and implement the rest of :class:`StoreAdapter`."""

    store: str
    drillable = True

    def __init__(self, config: DbopsConfig, links: Links) -> None:
        self.config = config
        self.links = links

    def __repr__(self) -> str:
        return f"{type(self).__name__}(connection {getattr(self.config.connections, self.store)!r})"

    def series(self, log: LogFn) -> list[str | None]:
        return [None]

    def check_series(self, subject: str | None) -> None:
        if subject is not None:
            raise BackupRefused(f"{self.store} is backed up as one series (None), not {subject!r}")

    def restore_subject(self, request: RestoreRequest) -> str | None:
        return None

    def expire(self, backup: Backup, log: LogFn) -> None:
        """Nothing outside the repository: the whole backup is in its folder."""
