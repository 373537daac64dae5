"""PostgreSQL: bootstrap (migrations + the ANN index) and its verification.

Works on a psycopg 3 connection handed in by the caller (the Airflow layer gets it
from the postgres provider's hook); no Airflow import here.
"""

from __future__ import annotations

import re

from psycopg import sql

from dbops.config import PostgresSettings
from dbops.migrations import Migration, MigrationError, MigrationRunner, discover
from dbops.report import Action, StoreReport
from dbops.sqlfiles import MIGRATIONS_DIR, load_sql

ANN_INDEX = ("data_platform", "text_embeddings_embedding_ann")


def migrations() -> list[Migration]:
    return discover(MIGRATIONS_DIR)


def bootstrap(conn, settings: PostgresSettings, *, dry_run: bool = False) -> StoreReport:
    """Apply pending migrations, then make sure the vector ANN index exists as configured."""
    report = StoreReport("postgres", dry_run=dry_run)
    MigrationRunner(conn, migrations()).run(report, dry_run=dry_run)
    ensure_ann_index(conn, settings, report, dry_run=dry_run)
    return report


def _ann_index_sql(settings: PostgresSettings) -> sql.Composed:
    schema, name = ANN_INDEX
    template = load_sql(f"bootstrap/ann_index_{settings.ann_index}.sql")
    return sql.SQL(template).format(
        index=sql.Identifier(name),
        lists=sql.Literal(settings.ivfflat_lists),
    )


def _ann_target(settings: PostgresSettings) -> str:
    return f"index {'.'.join(ANN_INDEX)} ({settings.ann_index})"


def ann_index_state(conn, settings: PostgresSettings) -> tuple[Action, str]:
    """("missing" | "drift" | "unchanged", detail) for the vector ANN index."""
    existing = _describe_index(conn, *ANN_INDEX)
    if existing is None:
        return "missing", "not built"
    problems = []
    if not existing["valid"]:
        problems.append("index is INVALID (a failed concurrent build); drop it and rerun")
    if existing["method"] != settings.ann_index:
        problems.append(f"exists as {existing['method']}, config asks {settings.ann_index}")
    elif settings.ann_index == "ivfflat":
        lists = re.search(r"lists\s*=\s*'?(\d+)", existing["definition"])
        if lists and int(lists.group(1)) != settings.ivfflat_lists:
            problems.append(f"lists={lists.group(1)}, config asks {settings.ivfflat_lists}")
    return ("drift", "; ".join(problems)) if problems else ("unchanged", "")


def ensure_ann_index(conn, settings: PostgresSettings, report: StoreReport, *, dry_run: bool) -> None:
    """CREATE INDEX CONCURRENTLY when missing; a different method or an invalid index is drift."""
    target = _ann_target(settings)
    action, detail = ann_index_state(conn, settings)
    if action != "missing":
        report.add(action, target, detail)
        return
    if dry_run:
        report.add("create", target, "would build concurrently")
        return
    conn.autocommit = True  # CREATE INDEX CONCURRENTLY cannot run inside a transaction
    try:
        conn.execute(_ann_index_sql(settings))
    finally:
        conn.autocommit = False
    action, detail = ann_index_state(conn, settings)
    if action == "unchanged":
        report.add("create", target, "built concurrently")
    else:
        report.add("drift", target, f"build did not leave a valid index: {detail}")


def _describe_index(conn, schema: str, name: str) -> dict | None:
    with conn.cursor() as cur:
        cur.execute(load_sql("bootstrap/index_describe.sql"), (schema, name))
        row = cur.fetchone()
    conn.rollback()
    if row is None:
        return None
    return {"method": row[0], "valid": row[1], "definition": row[2]}


# ----------------------------------------------------------------------------- verify

_COMMENT = re.compile(r"--[^\n]*")
_TABLE = re.compile(r"\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\.(\w+)", re.I)
_INDEX = re.compile(
    r"\bCREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\s+ON\s+(?:ONLY\s+)?(\w+)\.",
    re.I,
)
_DROP = re.compile(r"\bDROP\s+(TABLE|INDEX)\s+(?:IF\s+EXISTS\s+)?(\w+)\.(\w+)", re.I)
_EXTENSION = re.compile(r"\bCREATE\s+EXTENSION\s+(?:IF\s+NOT\s+EXISTS\s+)?\"?([\w-]+)\"?", re.I)


def declared_objects(items: list[Migration]) -> dict[str, set[str]]:
    """Tables, indexes and extensions the migration files create (and do not drop later)."""
    objects: dict[str, set[str]] = {"table": set(), "index": set(), "extension": set()}
    for m in items:
        text = _COMMENT.sub("", m.sql)
        for schema, name in _TABLE.findall(text):
            objects["table"].add(f"{schema}.{name}".lower())
        for name, schema in _INDEX.findall(text):
            objects["index"].add(f"{schema}.{name}".lower())
        for ext in _EXTENSION.findall(text):
            objects["extension"].add(ext.lower())
        for kind, schema, name in _DROP.findall(text):
            objects[kind.lower()].discard(f"{schema}.{name}".lower())
    return objects


def verify(conn, settings: PostgresSettings) -> StoreReport:
    """Every migration applied unchanged; every declared object present; ANN index valid."""
    report = StoreReport("postgres")
    items = migrations()
    try:
        pending = MigrationRunner(conn, items).pending()
    except MigrationError as exc:
        report.add("drift", "migration history", str(exc))
        pending = []
    for m in pending:
        report.add("missing", f"migration {m.filename}", "not applied")
    declared = declared_objects(items)
    with conn.cursor() as cur:
        for kind in ("table", "index"):
            for name in sorted(declared[kind]):
                cur.execute(load_sql("bootstrap/relation_exists.sql"), (name,))
                present = cur.fetchone()[0]
                report.add("unchanged" if present else "missing", f"{kind} {name}")
        cur.execute(load_sql("bootstrap/extensions_installed.sql"))
        installed = {row[0] for row in cur.fetchall()}
        cur.execute(load_sql("bootstrap/extensions_available.sql"))
        available = {row[0] for row in cur.fetchall()}
    conn.rollback()
    for ext in sorted(declared["extension"]):
        if ext in installed:
            report.add("unchanged", f"extension {ext}")
        elif ext in available:
            report.add("missing", f"extension {ext}")
        else:
            # contrib extensions such as uuid-ossp are created only where the server has them
            report.add("unchanged", f"extension {ext}", "not available on this server; not required")
    report.add(*_with_target(ann_index_state(conn, settings), _ann_target(settings)))
    return report


def _with_target(state: tuple[Action, str], target: str) -> tuple[Action, str, str]:
    return state[0], target, state[1]


# ----------------------------------------------------------------------------- initial admin

PBKDF2_ITERATIONS = 1_000_000  # Django 5.2's default for pbkdf2_sha256


def django_password_hash(password: str, *, salt: str | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """``pbkdf2_sha256$<iterations>$<salt>$<base64 hash>``, the format Django's auth reads."""
    import base64
    import hashlib
    import secrets

    salt = salt or secrets.token_urlsafe(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(digest).decode()}"


def ensure_initial_admin(conn, username: str, email: str, password: str, report: StoreReport, *, dry_run: bool) -> None:
    """Create the admin account once; an existing account (and its password) is never touched."""
    target = f"auth.users {username!r} (initial admin)"
    if not password:
        raise ValueError("the platform admin connection has no password")
    if dry_run:
        exists = False
        with conn.cursor() as cur:
            cur.execute(load_sql("bootstrap/relation_exists.sql"), ("auth.users",))
            if cur.fetchone()[0]:
                cur.execute(load_sql("bootstrap/admin_exists.sql"), (username,))
                exists = cur.fetchone() is not None
        conn.rollback()
        report.add("unchanged" if exists else "create", target, "" if exists else "would create")
        return
    with conn.transaction():
        with conn.cursor() as cur:
            cur.execute(load_sql("bootstrap/admin_exists.sql"), (username,))
            if cur.fetchone():
                report.add("unchanged", target, "exists; its password is left as it is")
                return
            cur.execute(load_sql("bootstrap/admin_insert.sql"), (username, email, django_password_hash(password)))
    report.add("create", target, "created (pbkdf2_sha256)")
