"""The small interface every store's backup adapter implements (no Airflow import).

An adapter knows one store's standard tools. It writes a dump into a staging folder
it is given, checks a dump with the tool's own means, restores one, and describes a
live store so a restore drill can compare the two. The repository (manifest, sha256,
atomic rename, retention) is not its business.

Credentials arrive in an :class:`Endpoint` and reach the tools only through the
environment or 0600 files that are removed afterwards: never argv, never a log line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


class BackupAdapter(Protocol):
    store: str

    def dump(self, staging: Path, log: LogFn) -> DumpResult:
        """Write the backup's files into ``staging`` (an empty folder)."""

    def check(self, backup_dir: Path, manifest: dict[str, Any], log: LogFn) -> list[Check]:
        """Tool-level check of a written backup (pg_restore --list, redis-check-rdb, ...)."""

    def describe(self, log: LogFn) -> dict[str, Any]:
        """Counts and sampled checksums of the live store, for a restore drill to compare."""
