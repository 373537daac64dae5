"""A stand-in Weaviate for tests: only the REST endpoints dbops uses, held to the published spec.

No Weaviate server can be installed where dbops is developed or tested (no package ships
it; its embedded mode downloads from GitHub). This small HTTP server is the closest thing:
dbops talks to it through the same code path as to a real server (``requests`` over HTTP),
and it holds both sides to Weaviate's published OpenAPI spec of the version it plays
(``tests/unit/data/weaviate/openapi-v<version>.dbops.json``): every request body dbops sends
and every response body it answers with is validated against the operation's schema, and a
call to an operation the spec lacks is a violation. Violations are collected in
``server.violations`` (tests assert it stays empty) and answered with HTTP 400.

With an S3 client, the ``s3`` backend writes objects under ``s3://<bucket>/<prefix>/<id>/``
as Weaviate's backup-s3 module does, so that expiry is tested against a real S3 server.
"""

from __future__ import annotations

import json
import re
import threading
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator

SPEC_DIR = Path(__file__).parent / "unit" / "data" / "weaviate"
SPEC_VERSIONS = ("1.22.13", "1.39.0")


@cache
def spec(version: str) -> dict[str, Any]:
    return json.loads((SPEC_DIR / f"openapi-v{version}.dbops.json").read_text())


def schema_errors(version: str, schema: dict[str, Any], body: Any) -> list[str]:
    """Errors of ``body`` against a schema of the spec (its definitions resolvable)."""
    document = {"definitions": spec(version)["definitions"], **schema}
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in Draft4Validator(document).iter_errors(body)
    ]


def operation(version: str, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    """(spec path, operation) for a concrete ``/v1/...`` path, or None when the spec lacks it."""
    base = spec(version)["basePath"]
    if not path.startswith(base):
        return None
    rest = path[len(base) :]
    for template, ops in spec(version)["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, rest) and method.lower() in ops:
            return template, ops[method.lower()]
    return None


def request_errors(version: str, method: str, path: str, body: Any) -> list[str]:
    found = operation(version, method, path)
    if found is None:
        return [f"{method} {path}: not an operation of Weaviate {version}'s spec"]
    template, op = found
    params = [p for p in op.get("parameters", []) if p.get("in") == "body"]
    if not params:
        return [] if body is None else [f"{method} {template}: takes no body"]
    if body is None:
        return [f"{method} {template}: body required"] if params[0].get("required") else []
    return [f"{method} {template} request: {e}" for e in schema_errors(version, params[0]["schema"], body)]


def response_errors(version: str, method: str, path: str, status: int, body: Any) -> list[str]:
    found = operation(version, method, path)
    if found is None:
        return [f"{method} {path}: not an operation of Weaviate {version}'s spec"]
    template, op = found
    declared = op.get("responses", {}).get(str(status))
    if declared is None:
        return [f"{method} {template}: status {status} not in the spec"]
    if "schema" not in declared:
        return []
    return [f"{method} {template} {status} response: {e}" for e in schema_errors(version, declared["schema"], body)]


class FakeWeaviate:
    """State of the stand-in server; ``url`` once started (a context manager)."""

    def __init__(self, version: str = "1.22.13", *, spec_version: str | None = None, s3=None) -> None:
        self.version = version
        self.spec_version = spec_version or ("1.22.13" if version.startswith(("1.22", "1.23")) else "1.39.0")
        self.s3 = s3  # (client, bucket, prefix) for the s3 backend
        self.classes: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, int] = {}
        self.backups: dict[tuple[str, str], dict[str, Any]] = {}
        self.violations: list[str] = []
        self.calls: list[tuple[str, str]] = []
        self.fail_next_backup = False
        self.on_count = None  # called before each count (a writer changing the data)
        self.lock = threading.Lock()

    # ---------------------------------------------------------------- state helpers

    def add_class(self, name: str, count: int) -> None:
        self.classes[name] = {
            "class": name,
            "vectorizer": "none",
            "properties": [{"name": "text", "dataType": ["text"]}],
        }
        self.counts[name] = count

    def _path(self, backend: str, wid: str) -> str:
        if backend == "s3":
            _, bucket, prefix = self.s3
            return f"s3://{bucket}/{prefix}/{wid}"
        return f"/var/lib/weaviate/backups/{wid}"

    def _write_objects(self, wid: str, classes: list[str]) -> None:
        client, bucket, prefix = self.s3
        client.put_object(Bucket=bucket, Key=f"{prefix}/{wid}/backup_config.json", Body=b"{}")
        for name in classes:
            client.put_object(Bucket=bucket, Key=f"{prefix}/{wid}/node1/{name}/chunk-1", Body=b"x" * 100)

    # ---------------------------------------------------------------- endpoints

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        with self.lock:
            return self._handle(method, path, body)

    def _error(self, status: int, message: str) -> tuple[int, Any]:
        return status, {"error": [{"message": message}]}

    def _handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        self.calls.append((method, path))
        if (method, path) == ("GET", "/v1/meta"):
            return 200, {"hostname": "http://[::]:8080", "version": self.version, "modules": {"backup-s3": {}}}
        if (method, path) == ("GET", "/v1/schema"):
            return 200, {"classes": [self.classes[n] for n in sorted(self.classes)]}
        if (method, path) == ("POST", "/v1/graphql"):
            name = re.search(r"Aggregate\s*{\s*(\w+)", body["query"]).group(1)
            if self.on_count:
                self.on_count(self)
            if name not in self.classes:
                return 200, {"errors": [{"message": f"class {name} not found"}]}
            return 200, {"data": {"Aggregate": {name: [{"meta": {"count": self.counts[name]}}]}}}
        match = re.match(r"^/v1/backups/([a-z0-9-]+)(?:/([a-z0-9_-]+))?(/restore)?$", path)
        if not match:
            return self._error(404, f"no route {method} {path}")
        backend, wid, restore = match.groups()
        if method == "POST" and wid is None:
            wid = body["id"]
            if (backend, wid) in self.backups:
                return self._error(422, f"backup {wid!r} already exists")
            if any(b["status"] not in ("SUCCESS", "FAILED", "CANCELED") for b in self.backups.values()):
                return self._error(422, "backup already in progress")
            classes = sorted(body.get("include") or self.classes)
            record = {
                "id": wid,
                "backend": backend,
                "path": self._path(backend, wid),
                "classes": classes,
                "status": "STARTED",
                "snapshot": {n: self.counts[n] for n in classes},
                "fail": self.fail_next_backup,
                "restore": None,
            }
            self.fail_next_backup = False
            self.backups[(backend, wid)] = record
            if backend == "s3":
                self._write_objects(wid, classes)
            answer = {k: record[k] for k in ("id", "backend", "path", "classes", "status")}
            if self.spec_version != "1.22.13" and backend == "s3":
                answer["bucket"] = self.s3[1]
            return 200, answer
        record = self.backups.get((backend, wid))
        if record is None or (backend == "s3" and not self._objects_exist(wid)):
            return self._error(404, f"backup {wid!r} not found")
        if restore and method == "POST":
            exists = sorted(set(self.classes) & set(body.get("include") or record["classes"]))
            if exists:
                return self._error(422, f"restore: classes {exists} exist")
            record["restore"] = "STARTED"
            return 200, {
                "id": wid,
                "backend": backend,
                "path": record["path"],
                "classes": record["classes"],
                "status": "STARTED",
            }
        if restore and method == "GET":
            if record["restore"] is None:
                return self._error(404, f"no restore of {wid!r}")
            if record["restore"] == "STARTED":
                record["restore"] = "SUCCESS"
                for name in record["classes"]:
                    self.add_class(name, record["snapshot"][name])
            return 200, {"id": wid, "backend": backend, "path": record["path"], "status": record["restore"]}
        if method == "GET":
            if record["status"] == "STARTED":
                record["status"] = "TRANSFERRING"
            elif record["status"] == "TRANSFERRING":
                record["status"] = "FAILED" if record["fail"] else "SUCCESS"
            answer = {"id": wid, "backend": backend, "path": record["path"], "status": record["status"]}
            if record["status"] == "FAILED":
                answer["error"] = "node1: disk full"
            return 200, answer
        return self._error(404, f"no route {method} {path}")

    def _objects_exist(self, wid: str) -> bool:
        client, bucket, prefix = self.s3
        return client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{wid}/", MaxKeys=1).get("KeyCount", 0) > 0

    # ---------------------------------------------------------------- the HTTP server

    def __enter__(self) -> FakeWeaviate:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body, problems = None, [f"{self.command} {path}: body is not JSON"]
                else:
                    problems = request_errors(fake.spec_version, self.command, path, body)
                if problems:
                    fake.violations += problems
                    status, answer = 400, {"error": [{"message": "; ".join(problems)}]}
                else:
                    status, answer = fake.handle(self.command, path, body)
                    problems = response_errors(fake.spec_version, self.command, path, status, answer)
                    fake.violations += problems
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
