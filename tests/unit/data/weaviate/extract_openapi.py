"""Cut Weaviate's published OpenAPI (Swagger 2.0) spec down to the endpoints dbops uses.

Usage: python extract_openapi.py openapi-vX.Y.Z.json > openapi-vX.Y.Z.dbops.json

Keeps ``swagger``, ``info``, ``basePath``, the operations listed in USED (unchanged) and
every definition they reference, transitively (unchanged). Nothing is edited.
"""

from __future__ import annotations

import hashlib
import json
import sys

USED = {
    "/meta": ["get"],
    "/schema": ["get", "post"],
    "/schema/{className}/properties": ["post"],
    "/graphql": ["post"],
    "/backups/{backend}": ["post"],
    "/backups/{backend}/{id}": ["get"],
    "/backups/{backend}/{id}/restore": ["get", "post"],
}


def _refs(node, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def extract(raw: bytes) -> dict:
    spec = json.loads(raw)
    paths = {path: {m: spec["paths"][path][m] for m in methods} for path, methods in USED.items()}
    names: set[str] = set()
    _refs(paths, names)
    done: set[str] = set()
    while names - done:
        name = sorted(names - done)[0]
        done.add(name)
        _refs(spec["definitions"][name], names)
    return {
        "swagger": spec["swagger"],
        "info": spec["info"],
        "basePath": spec["basePath"],
        "x-dbops-extracted-from": {"sha256": hashlib.sha256(raw).hexdigest(), "paths": USED},
        "paths": paths,
        "definitions": {name: spec["definitions"][name] for name in sorted(done)},
    }


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as fh:
        print(json.dumps(extract(fh.read()), indent=1, sort_keys=True))
