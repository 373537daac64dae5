"""Weaviate: classes as specified, through the stable REST API (1.22 up to today's servers).

Takes a ``requests.Session`` and the server's base URL; no Airflow import. The v4
Python client refuses servers older than 1.27, so this speaks REST on purpose.
"""

from __future__ import annotations

from typing import Any

from dbops.report import StoreReport


class WeaviateError(RuntimeError):
    pass


def _check(response, what: str):
    if response.status_code >= 300:
        raise WeaviateError(f"Weaviate {what}: HTTP {response.status_code} {response.text[:300]}")
    return response.json() if response.content else None


def current_classes(session, base_url: str, timeout: float = 30.0) -> dict[str, dict]:
    schema = _check(session.get(f"{base_url}/v1/schema", timeout=timeout), "GET /v1/schema")
    return {c["class"]: c for c in (schema or {}).get("classes") or []}


def _data_type(prop: dict) -> list[str]:
    return [t.lower() for t in prop.get("dataType", [])]


def bootstrap(
    session, base_url: str, spec: dict[str, Any], *, dry_run: bool = False, timeout: float = 30.0
) -> StoreReport:
    report = StoreReport("weaviate", dry_run=dry_run)
    existing = current_classes(session, base_url, timeout)
    for wanted in spec["classes"]:
        name = wanted["class"]
        actual = existing.get(name)
        if actual is None:
            if not dry_run:
                _check(session.post(f"{base_url}/v1/schema", json=wanted, timeout=timeout), f"create class {name}")
            report.add("create", f"class {name}", "would create" if dry_run else "created")
            continue
        if wanted.get("vectorizer") and actual.get("vectorizer") != wanted["vectorizer"]:
            report.add(
                "drift", f"class {name} vectorizer", f"is {actual.get('vectorizer')}, spec says {wanted['vectorizer']}"
            )
        props = {p["name"].lower(): p for p in actual.get("properties") or []}
        for prop in wanted.get("properties", []):
            target = f"class {name} property {prop['name']}"
            have = props.get(prop["name"].lower())
            if have is None:
                if not dry_run:
                    _check(
                        session.post(f"{base_url}/v1/schema/{name}/properties", json=prop, timeout=timeout),
                        f"add property {name}.{prop['name']}",
                    )
                report.add("create", target, "would add" if dry_run else "added")
            elif _data_type(have) != _data_type(prop):
                report.add(
                    "drift",
                    target,
                    f"dataType {have.get('dataType')} but spec says "
                    f"{prop['dataType']}; types cannot be changed in place",
                )
            else:
                report.add("unchanged", target)
    return report


def verify(session, base_url: str, spec: dict[str, Any], timeout: float = 30.0) -> StoreReport:
    return bootstrap(session, base_url, spec, dry_run=True, timeout=timeout).as_verification()
