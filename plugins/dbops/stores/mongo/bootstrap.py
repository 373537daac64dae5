"""MongoDB: collections and indexes as specified, reconciled, never silently different.

Takes a pymongo ``Database``; no Airflow import.
- a missing collection or index is created;
- a TTL index whose ``expireAfterSeconds`` differs is changed in place with ``collMod``;
- any other difference (other keys under the same name, unique vs not, the same keys
  under another name) cannot be fixed without dropping an index on a live database,
  so it is reported as drift (and fails the verify step) for a human to decide.
"""

from __future__ import annotations

from typing import Any

from pymongo.errors import OperationFailure

from dbops.report import StoreReport

# options that make two indexes different if they differ
_COMPARED_OPTIONS = ("unique", "sparse", "expireAfterSeconds", "partialFilterExpression")


def collection_specs(spec: dict[str, Any]) -> list[dict[str, Any]]:
    collections = spec["collections"]
    if isinstance(collections, dict):
        collections = [{"name": name, **body} for name, body in collections.items()]
    return collections


def _keys(index: dict[str, Any]) -> list[tuple[str, Any]]:
    keys = index.get("keys") or index.get("key") or []
    if isinstance(keys, dict):
        keys = list(keys.items())
    return [(field, direction) for field, direction in keys]


def _options(index: dict[str, Any]) -> dict[str, Any]:
    source = index.get("options", index)
    opts = {k: source[k] for k in _COMPARED_OPTIONS if k in source}
    if opts.get("unique") is False:
        del opts["unique"]
    if opts.get("sparse") is False:
        del opts["sparse"]
    return opts


def _same_direction(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


def _same_keys(a: list[tuple[str, Any]], b: list[tuple[str, Any]]) -> bool:
    return len(a) == len(b) and all(
        fa == fb and _same_direction(da, db) for (fa, da), (fb, db) in zip(a, b, strict=True)
    )


def bootstrap(db, spec: dict[str, Any], *, dry_run: bool = False) -> StoreReport:
    report = StoreReport("mongo", dry_run=dry_run)
    existing_collections = set(db.list_collection_names())
    for coll_spec in collection_specs(spec):
        name = coll_spec["name"]
        if name not in existing_collections:
            if not dry_run:
                options = {"validator": coll_spec["validator"]} if coll_spec.get("validator") else {}
                db.create_collection(name, **options)
            report.add("create", f"collection {db.name}.{name}", "would create" if dry_run else "created")
        else:
            report.add("unchanged", f"collection {db.name}.{name}")
        current = {} if name not in existing_collections else db[name].index_information()
        for index in coll_spec.get("indexes", []):
            _reconcile_index(db, name, index, current, report, dry_run)
    return report


def _reconcile_index(db, collection: str, index: dict, current: dict, report: StoreReport, dry_run: bool) -> None:
    name = index["name"]
    keys, options = _keys(index), _options(index)
    target = f"index {db.name}.{collection}.{name}"
    have = current.get(name)
    if have is None:
        same_keys = [n for n, info in current.items() if _same_keys(_keys(info), keys)]
        if same_keys:
            report.add("drift", target, f"the same keys are indexed as {same_keys[0]!r}; rename or drop it")
            return
        if not dry_run:
            db[collection].create_index(keys, name=name, **options)
        report.add("create", target, "would create" if dry_run else "created")
        return
    if not _same_keys(_keys(have), keys):
        report.add("drift", target, f"keys are {_keys(have)}, spec says {keys}")
        return
    actual = _options(have)
    differ = {k for k in set(actual) | set(options) if actual.get(k) != options.get(k)}
    if not differ:
        report.add("unchanged", target)
    elif differ == {"expireAfterSeconds"} and "expireAfterSeconds" in actual and "expireAfterSeconds" in options:
        detail = f"expireAfterSeconds {actual['expireAfterSeconds']} -> {options['expireAfterSeconds']}"
        if dry_run:
            report.add("update", target, f"would set {detail}")
            return
        try:
            db.command(
                {"collMod": collection, "index": {"name": name, "expireAfterSeconds": options["expireAfterSeconds"]}}
            )
        except OperationFailure as exc:
            report.add("drift", target, f"{detail} refused by the server: {exc}")
            return
        report.add("update", target, f"set {detail} (collMod)")
    else:
        changes = ", ".join(f"{k}: {actual.get(k)} -> {options.get(k)}" for k in sorted(differ))
        report.add("drift", target, f"{changes}; needs a drop and rebuild, not done automatically")


def verify(db, spec: dict[str, Any]) -> StoreReport:
    return bootstrap(db, spec, dry_run=True).as_verification()


APP_ROLES = ("readWrite", "dbAdmin")


def _can_login(db, username: str, password: str) -> bool:
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure

    address = db.client.address
    probe: MongoClient[dict[str, Any]] = MongoClient(
        host=address[0],
        port=address[1],
        username=username,
        password=password,
        authSource=db.name,
        serverSelectionTimeoutMS=5000,
    )
    try:
        probe[db.name].command("ping")
        return True
    except OperationFailure:
        return False
    finally:
        probe.close()


def ensure_app_user(db, username: str, password: str, report: StoreReport, *, dry_run: bool) -> None:
    """The application user with readWrite + dbAdmin on the platform database.

    Created when missing; missing roles are granted; a password that no longer logs in
    (rotated in the Airflow connection) is updated. Nothing changes on a rerun.
    """
    target = f"user {username}@{db.name}"
    wanted = [{"role": role, "db": db.name} for role in APP_ROLES]
    users = db.command("usersInfo", username).get("users", [])
    if not users:
        if not dry_run:
            db.command("createUser", username, pwd=password, roles=wanted)
        report.add("create", target, "would create" if dry_run else f"created with roles {', '.join(APP_ROLES)}")
        return
    have = {(r["role"], r["db"]) for r in users[0].get("roles", [])}
    missing = [r for r in wanted if (r["role"], r["db"]) not in have]
    if missing:
        if not dry_run:
            db.command("grantRolesToUser", username, roles=missing)
        report.add(
            "update", target, ("would grant " if dry_run else "granted ") + ", ".join(r["role"] for r in missing)
        )
    if dry_run:
        if not missing:
            report.add("unchanged", target)
        return
    if not _can_login(db, username, password):
        db.command("updateUser", username, pwd=password)
        report.add("update", target, "password updated from the connection")
    elif not missing:
        report.add("unchanged", target)
