"""Weaviate: backups through the server's own backup REST API (no Airflow import).

The data stays in the backend Weaviate writes to; the dbops repository keeps the record
needed to find it there again (backend, Weaviate's backup id, the ``path`` the status
response gives, e.g. ``s3://bucket/prefix/<id>``), the schema and per-class object counts.
The default backend is ``s3`` (Weaviate's backup-s3 module): dbops can reach it and
expire a backup from it. ``filesystem`` keeps backups on the Weaviate server, where dbops
can neither expire nor ship them (said in the log of every such backup).

Endpoints used, the stable ones served from 1.22 to 1.39 (checked against Weaviate's
published OpenAPI specs in the tests): ``GET /v1/meta``, ``GET /v1/schema``,
``POST /v1/graphql``, ``POST /v1/backups/{backend}``, ``GET /v1/backups/{backend}/{id}``,
``POST|GET /v1/backups/{backend}/{id}/restore``. 1.22 has no list or delete of backups,
and 1.39's ``DELETE /v1/backups/{backend}/{id}`` *cancels* a running backup (it does not
delete a finished one): expiry deletes the objects in the bucket itself.

Retries leave no orphans: a run's Weaviate backup id is derived from the run
(``dbops-<hash>``, then ``-2``, ``-3`` ... for later attempts), so a retry finds the earlier
attempt's backup (1.22 cannot list them), waits for it when it still runs, and removes its
objects before taking its own.

No Weaviate server can be run where dbops is developed: the tests use a small HTTP server
that answers as the published specs say (see the tests).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from dbops.backup.adapter import Check, DumpResult, LogFn
from dbops.stores.weaviate.bootstrap import WeaviateError, _check, current_classes
from dbops.tools import write_secret_file

RECORD_FILE = "weaviate_backup.json"
SCHEMA_FILE = "schema.json"
RECORD_FORMAT = 2
# Weaviate: "only lowercase, numbers, underscore, minus characters allowed"
BACKUP_ID = re.compile(r"^[a-z0-9_-]{1,128}$")
IN_PROGRESS = frozenset({"STARTED", "TRANSFERRING", "TRANSFERRED", "FINALIZING", "CANCELLING"})
ENDED_BADLY = frozenset({"FAILED", "CANCELED"})
# Weaviate's own warning: servers up to 1.23.12 can corrupt data on restore
LAST_UNSAFE_RESTORE_VERSION = (1, 23, 12)
MAX_ATTEMPTS = 20


class WeaviateBackupTimeout(WeaviateError):
    """A backup still runs after the timeout (left running: a retry waits for it)."""


class WeaviateApi:
    """The few REST calls dbops makes, over a ``requests`` session."""

    def __init__(self, session, base_url: str, timeout: float = 60.0) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def get(self, path: str) -> Any:
        return _check(self.session.get(f"{self.base_url}{path}", timeout=self.timeout), f"GET {path}")

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return _check(self.session.post(f"{self.base_url}{path}", json=body, timeout=self.timeout), f"POST {path}")

    def version(self) -> str:
        return str((self.get("/v1/meta") or {}).get("version") or "unknown")

    def backup_status(self, backend: str, backup_id: str, *, restore: bool = False) -> dict[str, Any] | None:
        """The create (or restore) status of a backup; None when Weaviate does not know it (404)."""
        path = f"/v1/backups/{backend}/{backup_id}" + ("/restore" if restore else "")
        response = self.session.get(f"{self.base_url}{path}", timeout=self.timeout)
        if response.status_code == 404:
            return None
        return _check(response, f"GET {path}") or {}

    def counts(self, classes: list[str]) -> dict[str, int]:
        counts = {}
        for name in classes:
            reply = self.post("/v1/graphql", {"query": f"{{ Aggregate {{ {name} {{ meta {{ count }} }} }} }}"}) or {}
            if reply.get("errors"):
                raise WeaviateError(f"counting {name}: {reply['errors']}")
            counts[name] = reply["data"]["Aggregate"][name][0]["meta"]["count"]
        return counts


def parse_version(text: str) -> tuple[int, int, int] | None:
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", str(text or ""))
    return tuple(int(p) for p in match.groups()) if match else None  # type: ignore[return-value]


def run_backup_id(run_key: str, attempt: int) -> str:
    """The Weaviate backup id of one attempt of one run: the same on every retry."""
    digest = hashlib.sha256(run_key.encode()).hexdigest()[:20]
    return f"dbops-{digest}" + (f"-{attempt}" if attempt > 1 else "")


def s3_location(backend: str, backup_id: str, path: str | None, *, bucket: str | None = None) -> tuple[str, str]:
    """(bucket, key prefix) of an s3 backup from the ``path`` Weaviate reported
    (``s3://<bucket>/<prefix>/<id>``); ValueError when it does not name that backup."""
    if backend != "s3":
        raise ValueError(f"backend {backend!r} is not s3")
    match = re.match(r"^s3://([^/]+)/(.+)$", path or "")
    if not match:
        raise ValueError(f"the backup's path {path!r} is not s3://<bucket>/<prefix>/{backup_id}")
    found_bucket, key = match.group(1), match.group(2).strip("/")
    if key.rsplit("/", 1)[-1] != backup_id or not BACKUP_ID.match(backup_id):
        raise ValueError(f"the backup's path {path!r} does not end with its id {backup_id!r}")
    if bucket and found_bucket != bucket:
        raise ValueError(f"the backup's path {path!r} is not in the configured bucket {bucket!r}")
    return found_bucket, key


def delete_s3_objects(client, bucket: str, key: str, log: LogFn) -> int:
    """Delete every object under ``<key>/`` in ``bucket``; the number deleted. Raises when
    any is left (the backend refused some)."""
    prefix = key.rstrip("/") + "/"
    deleted = 0
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            answer = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            if answer.get("Errors"):
                errors = "; ".join(f"{e.get('Key')}: {e.get('Code')}" for e in answer["Errors"][:5])
                raise WeaviateError(f"s3://{bucket}/{prefix}: {len(answer['Errors'])} object(s) not deleted: {errors}")
            deleted += len(batch)
    left = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount", 0)
    if left:
        raise WeaviateError(f"s3://{bucket}/{prefix}: objects remain after deleting {deleted}")
    log(f"weaviate: deleted {deleted} object(s) under s3://{bucket}/{prefix}")
    return deleted


class WeaviateBackup:
    """One Weaviate backup in its backend, recorded in the repository."""

    store = "weaviate"

    def __init__(
        self,
        connect: Callable[[], AbstractContextManager[Any]],
        *,
        backend: str = "s3",
        timeout: float = 3600.0,
        poll_every: float = 5.0,
        run_key: str | None = None,
        in_use: Callable[[], set[str]] = set,
        discard: Callable[[str, str, dict[str, Any], LogFn], None] | None = None,
    ) -> None:
        """``connect()`` gives an object with ``session`` and ``base_url`` (a context manager);
        ``run_key`` names the run (retries of one run share it); ``in_use()`` the Weaviate ids
        recorded by complete backups; ``discard(backend, id, status, log)`` removes an
        attempt's backup from its backend."""
        self.connect = connect
        self.backend = backend
        self.timeout = timeout
        self.poll_every = poll_every
        self.run_key = run_key
        self.in_use = in_use
        self.discard = discard

    def _await(self, api: WeaviateApi, wid: str, log: LogFn) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            status = api.backup_status(self.backend, wid)
            if status is None:
                raise WeaviateError(f"Weaviate backup {wid} vanished from backend {self.backend}")
            state = status.get("status")
            log(f"weaviate backup {wid}: {state}")
            if state == "SUCCESS":
                return status
            if state in ENDED_BADLY:
                self._discard(wid, status, log)
                raise WeaviateError(f"Weaviate backup {wid} {state}: {status.get('error')}")
            if time.monotonic() > deadline:
                # left running: a retry of this run finds it by its id and waits for it
                raise WeaviateBackupTimeout(
                    f"Weaviate backup {wid} not finished after {self.timeout:.0f}s (last: {state})"
                )
            time.sleep(self.poll_every)

    def _discard(self, wid: str, status: dict[str, Any], log: LogFn) -> None:
        if self.discard is None:
            log(f"weaviate: backup {wid} is left in backend {self.backend}: dbops cannot remove it from there")
            return
        self.discard(self.backend, wid, status, log)

    def _ids(self):
        if self.run_key is None:  # outside a run: a fresh id, cleaned up when it fails
            yield f"dbops-{time.strftime('%Y%m%dt%H%M%Sz', time.gmtime())}-{secrets.token_hex(3)}"
            return
        for attempt in range(1, MAX_ATTEMPTS + 1):
            yield run_backup_id(self.run_key, attempt)

    def _take(self, api: WeaviateApi, names: list[str], log: LogFn) -> tuple[str, dict[str, Any]]:
        """Create this attempt's backup; earlier attempts' backups of the run are awaited
        (Weaviate runs one backup at a time) and removed, unless a complete backup records them."""
        in_use = None
        for wid in self._ids():
            status = api.backup_status(self.backend, wid)
            if status is None:
                path = f"/v1/backups/{self.backend}"
                response = api.session.post(
                    f"{api.base_url}{path}", json={"id": wid, "include": names}, timeout=api.timeout
                )
                if response.status_code == 422 and "exist" in response.text:
                    # Weaviate still knows the id (an earlier attempt's, whose objects were removed)
                    log(f"weaviate backup id {wid} is taken ({response.text[:200]}): taking the next one")
                    continue
                created = _check(response, f"POST {path}") or {}
                log(f"weaviate backup {wid} started on backend {self.backend}: {created.get('status')}")
                return wid, {**self._await(api, wid, log), "bucket": created.get("bucket")}
            if in_use is None:
                in_use = self.in_use()
            if wid in in_use:
                log(f"weaviate backup {wid} belongs to a complete backup of this run: taking another")
                continue
            state = status.get("status")
            log(f"weaviate backup {wid} was started by an earlier attempt of this run ({state})")
            if state in IN_PROGRESS:
                try:
                    status = self._await(api, wid, log)
                except WeaviateBackupTimeout:
                    raise
                except WeaviateError:
                    continue  # it ended badly and was discarded: take the next id
            # the counts that describe a backup are measured around it: an earlier attempt's
            # backup is removed, never reused
            self._discard(wid, status, log)
        raise WeaviateError(f"no free Weaviate backup id for this run after {MAX_ATTEMPTS} attempts")

    def dump(self, staging: Path, log: LogFn) -> DumpResult:
        with self.connect() as link:
            api = WeaviateApi(link.session, link.base_url)
            version = api.version()
            classes = current_classes(link.session, api.base_url)
            names = sorted(classes)
            if not names:
                raise WeaviateError("Weaviate has no classes: nothing to back up")
            before = api.counts(names)
            wid, status = self._take(api, names, log)
            after = api.counts(names)
        if self.backend != "s3":
            log(
                f"weaviate: backend {self.backend!r} keeps backup {wid} where dbops cannot expire or ship it; "
                "use the s3 backend (Weaviate's backup-s3 module)"
            )
        # Weaviate snapshots the classes between the two counts: equal counts are the
        # backup's own; unequal ones (a writer) bound it
        stable = {n: before[n] for n in names if before[n] == after[n]}
        bounds = {n: sorted((before[n], after[n])) for n in names if before[n] != after[n]}
        record = {
            "format": RECORD_FORMAT,
            "id": wid,
            "backend": self.backend,
            "path": status.get("path"),
            "bucket": status.get("bucket"),
            "status": {k: v for k, v in status.items() if k != "bucket"},
            "server_version": version,
            "classes": names,
            "counts": stable,
            "count_bounds": bounds,
        }
        write_secret_file(staging / RECORD_FILE, json.dumps(record, indent=1, sort_keys=True))
        write_secret_file(
            staging / SCHEMA_FILE, json.dumps({"classes": [classes[n] for n in names]}, indent=1, sort_keys=True)
        )
        return DumpResult(
            tool="weaviate-backup-api",
            tool_version=version,
            server_version=version,
            compression="backend",
            details={"weaviate_backup_id": wid, "backend": self.backend, "path": status.get("path"), "classes": names},
            description={"classes": names, "counts": stable, "count_bounds": bounds},
        )

    def check(self, backup_dir: Path, manifest: dict, log: LogFn) -> list[Check]:
        record = json.loads((backup_dir / RECORD_FILE).read_text())
        json.loads((backup_dir / SCHEMA_FILE).read_text())
        with self.connect() as link:
            status = WeaviateApi(link.session, link.base_url).backup_status(record["backend"], record["id"])
        state = (status or {}).get("status", "unknown to the backend")
        return [
            Check(
                "weaviate-status", state == "SUCCESS", f"backend {record['backend']} reports {state} for {record['id']}"
            )
        ]
