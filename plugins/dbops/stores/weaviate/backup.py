"""Weaviate: backups through the server's own backup REST API (no Airflow import).

The data stays in the backend Weaviate writes to (``filesystem`` on the server's
BACKUP_FILESYSTEM_PATH, or s3/gcs/azure); the dbops repository keeps a record of it:
the backup id and status Weaviate reported, the schema, and per-class object counts.
The endpoints used (/v1/meta, /v1/schema, /v1/backups/{backend}, /v1/graphql) are
the stable ones served from 1.22 to today's servers.

No Weaviate server can be run where dbops is developed, so this adapter is exercised
only against a real deployment; its tasks are skipped when no connection exists.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from dbops.backup.adapter import Check, DumpResult, LogFn
from dbops.stores.weaviate.bootstrap import WeaviateError, _check, current_classes

RECORD_FILE = "weaviate_backup.json"
SCHEMA_FILE = "schema.json"


class WeaviateBackup:
    store = "weaviate"

    def __init__(self, session, base_url: str, *, backend: str = "filesystem", timeout: float = 3600.0, poll_every: float = 5.0):
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.backend = backend
        self.timeout = timeout
        self.poll_every = poll_every

    def _get(self, path: str) -> Any:
        return _check(self.session.get(f"{self.base_url}{path}", timeout=60), f"GET {path}")

    def counts(self, classes: list[str]) -> dict[str, int]:
        counts = {}
        for name in classes:
            query = {"query": f"{{ Aggregate {{ {name} {{ meta {{ count }} }} }} }}"}
            reply = _check(self.session.post(f"{self.base_url}/v1/graphql", json=query, timeout=60), "aggregate")
            if reply.get("errors"):
                raise WeaviateError(f"counting {name}: {reply['errors']}")
            counts[name] = reply["data"]["Aggregate"][name][0]["meta"]["count"]
        return counts

    def dump(self, staging: Path, log: LogFn) -> DumpResult:
        version = self._get("/v1/meta").get("version", "unknown")
        classes = current_classes(self.session, self.base_url)
        names = sorted(classes)
        if not names:
            raise WeaviateError("Weaviate has no classes: nothing to back up")
        backup_id = f"dbops-{time.strftime('%Y%m%dt%H%M%Sz', time.gmtime())}-{secrets.token_hex(3)}"
        _check(
            self.session.post(
                f"{self.base_url}/v1/backups/{self.backend}", json={"id": backup_id, "include": names}, timeout=60
            ),
            "create backup",
        )
        deadline = time.monotonic() + self.timeout
        while True:
            status = self._get(f"/v1/backups/{self.backend}/{backup_id}")
            state = status.get("status")
            log(f"weaviate backup {backup_id}: {state}")
            if state == "SUCCESS":
                break
            if state == "FAILED":
                raise WeaviateError(f"Weaviate backup {backup_id} failed: {status.get('error')}")
            if time.monotonic() > deadline:
                raise WeaviateError(f"Weaviate backup {backup_id} not finished after {self.timeout:.0f}s (last: {state})")
            time.sleep(self.poll_every)
        record = {"id": backup_id, "backend": self.backend, "status": status, "classes": names, "counts": self.counts(names)}
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True))
        (staging / SCHEMA_FILE).write_text(json.dumps({"classes": [classes[n] for n in names]}, indent=1, sort_keys=True))
        return DumpResult(
            tool="weaviate-backup-api",
            tool_version=version,
            server_version=version,
            compression="backend",
            details={"weaviate_backup_id": backup_id, "backend": self.backend, "path": status.get("path"), "classes": names},
        )

    def check(self, backup_dir: Path, manifest: dict, log: LogFn) -> list[Check]:
        record = json.loads((backup_dir / RECORD_FILE).read_text())
        json.loads((backup_dir / SCHEMA_FILE).read_text())
        status = self._get(f"/v1/backups/{record['backend']}/{record['id']}")
        ok = status.get("status") == "SUCCESS"
        return [Check("weaviate-status", ok, f"backend reports {status.get('status')} for {record['id']}")]

    def describe(self, log: LogFn) -> dict:
        names = sorted(current_classes(self.session, self.base_url))
        return {"classes": names, "counts": self.counts(names)}
