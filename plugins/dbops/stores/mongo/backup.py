"""MongoDB backups: ``mongodump --archive --gzip``, checked, restored with ``mongorestore``.

No Airflow import. The adapter gets an :class:`~dbops.backup.adapter.Endpoint`; the
password reaches the tools only through a 0600 YAML ``--config`` file in a private
temporary folder that is removed afterwards (the tools' config file knows ``password``,
``uri`` and ``sslPEMKeyPassword``). Host, port, user and authentication database are
flags: they are not secret. The argv builders are plain functions so tests can assert
that no secret is ever in an argv.

What a backup is: one gzip-compressed archive, ``dump.archive.gz``.

- On a replica-set member (``hello`` answers a ``setName``) the whole instance is dumped
  with ``--oplog`` (a point in time), even when a database is configured: mongodump
  refuses ``--oplog`` together with ``--db``, and a restore takes one database out of the
  archive (``--nsInclude/--nsFrom/--nsTo``). A user that may not list the instance's
  databases gets a dump of the configured database alone, logged as not point-in-time.
  mongodump 100.x cannot leave a database out, so ``admin`` (users and roles, which a
  disaster restore needs) goes in with the rest; ``local`` is never dumped. The manifest's
  ``databases`` lists the application databases only (everything but admin, local, config).
- The description a drill and a restore compare with is read from the archive right after
  mongodump wrote it (never from the live store afterwards): per collection the count, an
  order-independent digest of every document's raw BSON and the index specs of the
  archive's metadata; per database its users and roles (from ``admin.system.users/roles``
  in the archive, or, where the server keeps them elsewhere as SecantusDB does, from
  ``usersInfo``/``rolesInfo`` right after the dump).

Checking a backup (cheap, no restore):

- the gzip stream is read to its end (CRC32 and length of every member): any flipped or
  missing byte fails here;
- in the same pass the archive format is walked (magic, prelude, per-namespace blocks,
  BSON framing, every namespace closed by its EOF block) and documents are counted per
  namespace, compared with the counts mongodump reported when it wrote the archive;
- ``mongorestore --dryRun`` confirms the installed tool accepts the archive. Measured
  with 100.3.1: the dry run reads only the archive's *prelude* (format version and the
  list of namespaces) and then stops: a byte flipped in the body, or a body cut short,
  still gives "dry run completed" and exit 0. It therefore proves only that the tool
  can open this archive and which namespaces it would restore; the body is verified by
  the walk above. (A real trial restore into a throwaway namespace is the restore
  drill's job, not a check's.)

Restoring goes into a renamed database by default (``--nsInclude from.* --nsFrom from.*
--nsTo to.*``); over the live namespace only with ``to_db == from_db`` and ``drop=True``.
mongorestore 100.3.1 exits 0 when documents fail to insert (e.g. duplicate keys): the
summary line is parsed and any failure is an error.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbops.backup.adapter import BackupRefused, Check, DumpResult, Endpoint, LogFn
from dbops.tools import ToolError, find_tool, run_tool, write_secret_file

ARCHIVE = "dump.archive.gz"
SYSTEM_DATABASES = frozenset({"admin", "local", "config"})
DEFAULT_SAMPLE_SIZE = 100
DEFAULT_PARALLEL_COLLECTIONS = 4
ARCHIVE_MAGIC = 0x8199E26D  # mongo-tools archive format, little-endian uint32
OPLOG_NS = ".oplog"  # --oplog in archive mode: database "", collection "oplog"
_TERMINATOR = -1  # int32 0xFFFFFFFF ends the prelude and every block
# database names mongod accepts (and that cannot smuggle a pattern into --nsFrom/--nsTo)
_DB_NAME = re.compile(r'^[^/\\. "$*<>:|?]{1,63}$')
_DONE_DUMPING = re.compile(r"done dumping (?P<ns>.+) \((?P<n>\d+) documents?\)\s*$")
_RESTORE_SUMMARY = re.compile(
    r"(?P<ok>\d+) document\(s\) restored successfully\. (?P<failed>\d+) document\(s\) failed to restore"
)
_PRELUDE_LINE = re.compile(r"archive prelude (?P<ns>.+?)\s*$")
# Airflow mongo connection extras that are not pymongo options
_NOT_CLIENT_OPTIONS = {"srv", "allow_insecure"}


class ArchiveError(ValueError):
    """The archive is not a well-formed mongodump archive."""


# ---------------------------------------------------------------------- tool argv


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


def _auth_source(endpoint: Endpoint) -> str:
    # as in a mongodb:// URI (what MongoHook builds): authSource, else the path (schema)
    return endpoint.extra.get("authSource") or endpoint.database or "admin"


def connection_args(endpoint: Endpoint) -> list[str]:
    """Where and as whom the tools connect: flags only, never a secret."""
    extra = endpoint.extra
    if _truthy(extra.get("srv")):
        user = f"{endpoint.login}@" if endpoint.login else ""
        # a mongodb+srv:// URI without the password (that goes in the --config file)
        args = [f"--uri=mongodb+srv://{user}{endpoint.host}/?authSource={_auth_source(endpoint)}"]
    else:
        host = endpoint.host
        if extra.get("replicaSet") and "/" not in host:
            host = f"{extra['replicaSet']}/{host}"
        args = [f"--host={host}"]
        if ":" not in endpoint.host:  # "h1:27017,h2:27017" carries its own ports
            args.append(f"--port={endpoint.port}")
        if endpoint.login:
            args += [f"--username={endpoint.login}", f"--authenticationDatabase={_auth_source(endpoint)}"]
    if endpoint.login and extra.get("authMechanism"):
        args.append(f"--authenticationMechanism={extra['authMechanism']}")
    if _truthy(extra.get("tls")) or _truthy(extra.get("ssl")):
        args.append("--ssl")
        if extra.get("tlsCAFile"):
            args.append(f"--sslCAFile={extra['tlsCAFile']}")
        if extra.get("tlsCertificateKeyFile"):
            args.append(f"--sslPEMKeyFile={extra['tlsCertificateKeyFile']}")
        if _truthy(extra.get("tlsInsecure")) or _truthy(extra.get("tlsAllowInvalidCertificates")):
            args.append("--tlsInsecure")
    return args


def _yaml_string(text: str) -> str:
    """A YAML double-quoted scalar that the tools' parser (go-yaml v2) reads back exactly.

    JSON quoting is not enough: go-yaml rejects the surrogate pairs json.dumps writes for
    characters outside the BMP, and takes U+2028 and friends as line breaks.
    """
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def config_text(endpoint: Endpoint) -> str | None:
    """The secrets for the tools' ``--config`` YAML file, or None when there are none."""
    lines = []
    if endpoint.password is not None:
        lines.append(f"password: {_yaml_string(endpoint.password)}")
    key_password = endpoint.extra.get("tlsCertificateKeyFilePassword")
    if key_password:
        lines.append(f"sslPEMKeyPassword: {_yaml_string(str(key_password))}")
    return "\n".join(lines) + "\n" if lines else None


@contextmanager
def tool_config(endpoint: Endpoint) -> Iterator[Path | None]:
    """A 0600 config file in a private (0700) temporary folder, removed on exit."""
    text = config_text(endpoint)
    if text is None:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="dbops-mongotools-"))  # mode 0700
    try:
        yield write_secret_file(folder / "tools.yaml", text)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _config_args(config: Path | None) -> list[str]:
    return [f"--config={config}"] if config is not None else []


def dump_argv(
    endpoint: Endpoint,
    archive: Path,
    *,
    database: str | None,
    oplog: bool,
    config: Path | None,
    parallel_collections: int = DEFAULT_PARALLEL_COLLECTIONS,
) -> list[str]:
    argv = [
        find_tool("mongodump"),
        *connection_args(endpoint),
        *_config_args(config),
        f"--archive={archive}",
        "--gzip",
        f"--numParallelCollections={parallel_collections}",
    ]
    if database is not None:
        argv.append(f"--db={database}")
    if oplog:
        argv.append("--oplog")
    return argv


def restore_argv(
    endpoint: Endpoint,
    archive: Path,
    *,
    from_db: str | None = None,
    to_db: str | None = None,
    drop: bool,
    config: Path | None,
    parallel_collections: int = DEFAULT_PARALLEL_COLLECTIONS,
    mapping: dict[str, str] | None = None,
) -> list[str]:
    """mongorestore of the databases ``mapping`` names (source -> target), or of ``from_db``
    as ``to_db``. --nsInclude: without it every other database of a whole-instance archive
    would be restored too, under its own (live) name. The archive's oplog is not replayed."""
    if not mapping:
        if from_db is None or to_db is None:
            raise ValueError("name the databases to restore: mapping, or from_db and to_db")
        mapping = {from_db: to_db}
    mapping = dict(mapping)
    argv = [
        find_tool("mongorestore"),
        *connection_args(endpoint),
        *_config_args(config),
        f"--archive={archive}",
        "--gzip",
    ]
    for source in mapping:
        argv.append(f"--nsInclude={source}.*")
    for source, target in mapping.items():
        argv += [f"--nsFrom={source}.*", f"--nsTo={target}.*"]
    argv.append(f"--numParallelCollections={parallel_collections}")
    if drop:
        argv.append("--drop")
    return argv


def dry_run_argv(endpoint: Endpoint, archive: Path, *, config: Path | None) -> list[str]:
    """mongorestore --dryRun -v: writes nothing; lists the archive's namespaces."""
    return [
        find_tool("mongorestore"),
        *connection_args(endpoint),
        *_config_args(config),
        f"--archive={archive}",
        "--gzip",
        "--dryRun",
        "-v",
    ]


def tool_version(tool: str, log: LogFn) -> str:
    out = run_tool([find_tool(tool), "--version"], log=log, timeout=120)
    match = re.search(rf"{tool} version: (\S+)", out)
    return match.group(1) if match else out.splitlines()[0].strip() if out.strip() else "unknown"


# ---------------------------------------------------------------------- the server


def client(endpoint: Endpoint, **overrides):
    """A pymongo client for ``endpoint`` (the password as an argument, never in a URI)."""
    from pymongo import MongoClient

    options: dict[str, Any] = {k: v for k, v in endpoint.extra.items() if k not in _NOT_CLIENT_OPTIONS}
    options.setdefault("serverSelectionTimeoutMS", 10000)
    if endpoint.login:
        options.update(username=endpoint.login, password=endpoint.password, authSource=_auth_source(endpoint))
    options.update(overrides)
    if _truthy(endpoint.extra.get("srv")):
        return MongoClient(f"mongodb+srv://{endpoint.host}", **options)
    return MongoClient(host=endpoint.host, port=endpoint.port, **options)


def replica_set_name(mongo) -> str | None:
    """The replica set this server belongs to (``hello``, or ``isMaster`` before 4.4.2)."""
    from pymongo.errors import OperationFailure

    try:
        reply = mongo.admin.command("hello")
    except OperationFailure:
        reply = mongo.admin.command("isMaster")
    return reply.get("setName")


def _can_list_databases(mongo) -> bool:
    """Whether this user may dump the whole instance (listDatabases on the cluster)."""
    from pymongo.errors import OperationFailure

    try:
        mongo.admin.command("listDatabases", nameOnly=True)
    except OperationFailure as exc:
        if exc.code == 13:  # Unauthorized
            return False
        raise
    return True


def application_databases(mongo) -> list[str]:
    return sorted(name for name in mongo.list_database_names() if name not in SYSTEM_DATABASES)


def _plain(value: Any) -> Any:
    """Index directions and TTLs as plain numbers (1 and 1.0 and Int64(1) are the same)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return int(value) if float(value).is_integer() else float(value)


def index_spec(index: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": index["name"],
        "key": [[name, _plain(direction)] for name, direction in index["key"].items()],
        "unique": bool(index.get("unique", False)),
        "expireAfterSeconds": _plain(index.get("expireAfterSeconds")),
    }
    if index.get("sparse"):
        spec["sparse"] = True
    if "partialFilterExpression" in index:
        spec["partialFilterExpression"] = _canonical(index["partialFilterExpression"])
    return spec


def _canonical(doc: Any) -> str:
    from bson import json_util

    return json_util.dumps(doc, sort_keys=True, json_options=json_util.CANONICAL_JSON_OPTIONS)


class DocumentDigest:
    """An order-independent digest of a collection's documents: the sum (mod 2**256) of the
    sha256 of each document's raw BSON. The archive and a restored copy give the same value
    whatever order the documents come in; a changed, lost or duplicated document changes it."""

    MODULUS = 1 << 256

    def __init__(self) -> None:
        self.count = 0
        self.total = 0

    def add(self, raw: bytes) -> None:
        self.total = (self.total + int.from_bytes(hashlib.sha256(raw).digest(), "big")) % self.MODULUS
        self.count += 1

    def hexdigest(self) -> str:
        return f"{self.total:064x}"


def collection_digest(collection) -> DocumentDigest:
    """The :class:`DocumentDigest` of a live collection, read as raw BSON (identical bytes)."""
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    raw = collection.with_options(codec_options=CodecOptions(document_class=RawBSONDocument))
    digest = DocumentDigest()
    for doc in raw.find({}, batch_size=1000):
        digest.add(doc.raw)
    return digest


def describe_database(db, sample_size: int = DEFAULT_SAMPLE_SIZE) -> dict[str, Any]:
    """collection -> count, index specs, digest of every document's raw BSON (views: their
    definition): the same shape :func:`describe_archive` gives for an archive."""
    collections: dict[str, Any] = {}
    for info in sorted(db.list_collections(), key=lambda i: i["name"]):
        name = info["name"]
        if name.startswith("system."):
            continue
        if info.get("type") == "view":
            options = info.get("options", {})
            collections[name] = {"view_on": options.get("viewOn"), "pipeline": _canonical(options.get("pipeline", []))}
            continue
        coll = db[name]
        digest = collection_digest(coll)
        collections[name] = {
            "count": digest.count,
            "indexes": sorted((index_spec(ix) for ix in coll.list_indexes()), key=lambda s: s["name"]),
            "digest": digest.hexdigest(),
        }
    return {"collections": collections}


def compare_databases(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Differences between two :func:`describe_database` results (empty: equal)."""
    problems = []
    want, have = expected["collections"], actual["collections"]
    for name in sorted(set(want) - set(have)):
        problems.append(f"collection {name} missing")
    for name in sorted(set(have) - set(want)):
        problems.append(f"collection {name} unexpected")
    for name in sorted(set(want) & set(have)):
        for key in sorted(set(want[name]) | set(have[name])):
            if want[name].get(key) != have[name].get(key):
                problems.append(f"collection {name}: {key} {want[name].get(key)!r} != {have[name].get(key)!r}")
    return problems


# ---------------------------------------------------------------------- the archive


@dataclass
class ArchiveSummary:
    header: dict[str, Any] = field(default_factory=dict)  # format version, server/tool version
    prelude: list[str] = field(default_factory=list)  # namespaces announced, in order
    views: set[str] = field(default_factory=set)
    documents: dict[str, int] = field(default_factory=dict)  # namespace -> documents in body
    closed: set[str] = field(default_factory=set)  # namespaces whose EOF block was seen
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)  # namespace -> indexes, options
    digests: dict[str, DocumentDigest] = field(default_factory=dict)  # namespace -> documents' digest
    # documents of admin.system.users / admin.system.roles (a real mongod dumps them)
    security: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    oplog_last: Any = None  # ts of the last oplog entry captured by --oplog

    def databases(self) -> list[str]:
        # the --oplog namespace (database "") is not a database
        return sorted({ns.split(".", 1)[0] for ns in self.prelude if "." in ns and ns != OPLOG_NS})


def _read_exact(stream, n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise ArchiveError(f"archive ends inside {what} ({len(data)} of {n} bytes)")
    return data


def _read_int32(stream, what: str, *, allow_eof: bool = False) -> int | None:
    data = stream.read(4)
    if not data and allow_eof:
        return None
    if len(data) != 4:
        raise ArchiveError(f"archive ends inside {what}")
    return struct.unpack("<i", data)[0]


def _read_doc(stream, length: int | None, what: str) -> bytes:
    if length is None or length < 5 or length > 48 * 1024 * 1024:
        raise ArchiveError(f"bad BSON length {length} in {what}")
    body = struct.pack("<i", length) + _read_exact(stream, length - 4, what)
    if body[-1] != 0:
        raise ArchiveError(f"BSON document in {what} does not end with NUL")
    return body


def _ns(doc: dict[str, Any]) -> str:
    return f"{doc.get('db', '')}.{doc.get('collection', '')}"


SECURITY_NAMESPACES = ("admin.system.users", "admin.system.roles")


def walk_archive(stream, *, prelude_only: bool = False, digest: bool = False) -> ArchiveSummary:
    """Walk a (decompressed) mongodump archive: structure and documents per namespace.

    Layout (mongo-tools ``archive``): magic; header BSON; one metadata BSON per
    namespace; terminator; then blocks of ``namespace header BSON, documents...,
    terminator``, each namespace ending with a header whose ``EOF`` is true.
    Documents are checked for framing only (length, trailing NUL): the bytes
    themselves are covered by gzip's CRC32. With ``digest``, every document's raw bytes
    also go into its namespace's :class:`DocumentDigest`, and each namespace's metadata
    (index specs, options) is parsed: the description of exactly what the archive holds.
    """
    import bson

    summary = ArchiveSummary()
    magic = struct.unpack("<I", _read_exact(stream, 4, "the magic number"))[0]
    if magic != ARCHIVE_MAGIC:
        raise ArchiveError(f"not a mongodump archive (magic {magic:#x})")
    length = _read_int32(stream, "the header")
    summary.header = bson.decode(_read_doc(stream, length, "the header"))
    if "version" not in summary.header:
        raise ArchiveError("archive header has no format version")
    while (length := _read_int32(stream, "the prelude")) != _TERMINATOR:
        meta = bson.decode(_read_doc(stream, length, "the prelude"))
        ns = _ns(meta)
        summary.prelude.append(ns)
        if '"viewOn"' in str(meta.get("metadata", "")):
            summary.views.add(ns)
        if digest and meta.get("metadata"):
            from bson import json_util

            summary.metadata[ns] = json_util.loads(meta["metadata"])
    if prelude_only:
        return summary
    announced = set(summary.prelude)
    while (length := _read_int32(stream, "a block header", allow_eof=True)) is not None:
        header = bson.decode(_read_doc(stream, length, "a block header"))
        ns = _ns(header)
        if "EOF" not in header:
            raise ArchiveError(f"block header without EOF flag: {header!r}")
        if ns not in announced and ns != OPLOG_NS:
            raise ArchiveError(f"block for {ns}, which the prelude does not announce")
        if ns in summary.closed:
            raise ArchiveError(f"block for {ns} after its EOF block")
        if header["EOF"]:
            summary.closed.add(ns)
            summary.documents.setdefault(ns, 0)
            if _read_int32(stream, f"the EOF block of {ns}") != _TERMINATOR:
                raise ArchiveError(f"EOF block of {ns} is not terminated")
            continue
        count = summary.documents.get(ns, 0)
        hashed = summary.digests.setdefault(ns, DocumentDigest()) if digest and ns != OPLOG_NS else None
        while (length := _read_int32(stream, f"a block of {ns}")) != _TERMINATOR:
            raw = _read_doc(stream, length, f"a document of {ns}")
            count += 1
            if hashed is not None:
                hashed.add(raw)
                if ns in SECURITY_NAMESPACES:
                    summary.security.setdefault(ns, []).append(bson.decode(raw))
            elif digest and ns == OPLOG_NS:
                summary.oplog_last = bson.decode(raw).get("ts")
        summary.documents[ns] = count
    open_ = [ns for ns in summary.documents if ns not in summary.closed]
    if open_:
        raise ArchiveError(f"archive ends before the EOF block of {', '.join(sorted(open_))}")
    absent = [ns for ns in summary.prelude if ns not in summary.closed and ns not in summary.views]
    if absent:
        raise ArchiveError(f"no data blocks for {', '.join(absent)}")
    return summary


def read_prelude(archive: Path) -> ArchiveSummary:
    """The archive's header and namespaces (decompresses only the first bytes)."""
    with gzip.open(archive, "rb") as fh:
        return walk_archive(io.BufferedReader(fh), prelude_only=True)


class _GzipSource(io.RawIOBase):
    """A gzip stream that remembers whether the gzip layer itself failed."""

    def __init__(self, gz) -> None:
        self.gz = gz
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self.gz.read(len(buffer))
        except (OSError, EOFError, zlib.error) as exc:
            self.error = exc
            raise
        buffer[: len(data)] = data
        return len(data)


def verify_archive(archive: Path, *, digest: bool = False) -> tuple[Check, Check, ArchiveSummary | None]:
    """One pass: the gzip stream to its very end, and the archive structure inside it."""
    summary: ArchiveSummary | None = None
    structure_error: str | None = None
    with open(archive, "rb") as fh, gzip.GzipFile(fileobj=fh, mode="rb") as gz:
        source = _GzipSource(gz)
        stream = io.BufferedReader(source, buffer_size=1 << 20)
        try:
            summary = walk_archive(stream, digest=digest)  # reads to the end of the stream when it succeeds
        except ArchiveError as exc:
            structure_error = str(exc)
        except Exception as exc:  # the gzip layer, or bson.errors.InvalidBSON and friends
            if source.error is None and not isinstance(exc, (OSError, EOFError, zlib.error)):
                structure_error = f"bad BSON: {exc}"
            elif source.error is None:
                raise
        if source.error is None and structure_error is not None:
            try:  # the walk stopped early: still read the gzip stream to its end
                while stream.read(1 << 20):
                    pass
            except (OSError, EOFError, zlib.error):
                pass  # recorded in source.error
    if source.error is not None:
        gz_check = Check("gzip", False, f"{ARCHIVE}: {type(source.error).__name__}: {source.error}")
        structure_error = structure_error or "not read to its end: the gzip stream is broken"
    else:
        size = archive.stat().st_size
        gz_check = Check("gzip", True, f"{ARCHIVE}: {size} bytes read to the end, CRC32 and length match")
    if structure_error is not None or summary is None:
        return gz_check, Check("archive_structure", False, structure_error or "not read"), None
    detail = (
        f"archive format {summary.header.get('version')} from mongodump {summary.header.get('tool_version')}: "
        f"{len(summary.closed)} namespaces, {sum(summary.documents.values())} documents, every block closed"
    )
    return gz_check, Check("archive_structure", True, detail), summary


def _role_pairs(roles: Any) -> list[list[str]]:
    return sorted([r.get("role"), r.get("db")] for r in roles or [])


def _users_and_roles(users: list[dict[str, Any]], roles: list[dict[str, Any]], database: str) -> dict[str, Any]:
    """Users and roles defined in ``database`` (no credentials), in a comparable form."""
    return {
        "users": sorted(
            ({"user": u.get("user"), "roles": _role_pairs(u.get("roles"))} for u in users if u.get("db") == database),
            key=lambda u: u["user"],
        ),
        "roles": sorted(
            (
                {
                    "role": r.get("role"),
                    "privileges": _canonical(r.get("privileges", [])),
                    "roles": _role_pairs(r.get("roles")),
                }
                for r in roles
                if r.get("db") == database
            ),
            key=lambda r: r["role"],
        ),
    }


def security_description(summary: ArchiveSummary, databases: list[str], mongo) -> dict[str, Any]:
    """Users and roles of the backed-up databases: from the archive's ``admin.system.users``
    and ``admin.system.roles`` when it holds them (a mongod dumping the whole instance);
    else, for a server that keeps them outside those collections (SecantusDB), read with
    ``usersInfo``/``rolesInfo`` right after the dump and marked so (``from``)."""
    if any(ns in summary.prelude for ns in SECURITY_NAMESPACES):
        users = summary.security.get("admin.system.users", [])
        roles = summary.security.get("admin.system.roles", [])
        found = "archive"
    else:
        from pymongo.errors import OperationFailure

        users, roles = [], []
        found = "server"
        try:
            for name in databases:
                users += mongo[name].command("usersInfo").get("users", [])
                roles += mongo[name].command("rolesInfo", showPrivileges=True, showBuiltinRoles=False).get("roles", [])
        except OperationFailure as exc:
            if exc.code != 13:  # Unauthorized: a backup user without viewUser/viewRole
                raise
            users, roles, found = [], [], "unreadable"
    return {"from": found, **{name: _users_and_roles(users, roles, name) for name in databases}}


def describe_archive(summary: ArchiveSummary, databases: list[str], security: dict[str, Any]) -> dict[str, Any]:
    """database -> the :func:`describe_database` shape, from a walk with ``digest=True``,
    plus the database's users and roles."""
    described: dict[str, Any] = {}
    for name in databases:
        collections: dict[str, Any] = {}
        for ns in summary.prelude:
            db, _, coll = ns.partition(".")
            if db != name or coll.startswith("system."):
                continue
            meta = summary.metadata.get(ns, {})
            options = meta.get("options") or {}
            if ns in summary.views:
                collections[coll] = {
                    "view_on": options.get("viewOn"),
                    "pipeline": _canonical(options.get("pipeline", [])),
                }
                continue
            digest = summary.digests.get(ns, DocumentDigest())
            collections[coll] = {
                "count": summary.documents.get(ns, 0),
                "indexes": sorted((index_spec(ix) for ix in meta.get("indexes", [])), key=lambda s: s["name"]),
                "digest": digest.hexdigest(),
            }
        described[name] = {"collections": collections, **security.get(name, {"users": [], "roles": []})}
    return described


# ---------------------------------------------------------------------- the adapter


class MongoBackup:
    """``mongodump --archive --gzip`` of one database, or of the whole instance (None)."""

    store = "mongo"

    def __init__(
        self,
        endpoint: Endpoint,
        database: str | None = None,
        *,
        sample_size: int = DEFAULT_SAMPLE_SIZE,
        parallel_collections: int = DEFAULT_PARALLEL_COLLECTIONS,
        timeout: float | None = None,
        check_with_tool: bool = True,
    ) -> None:
        if database is not None and not _DB_NAME.match(database):
            raise ValueError(f"not a MongoDB database name: {database!r}")
        self.endpoint = endpoint
        self.database = database
        self.sample_size = sample_size
        self.parallel_collections = parallel_collections
        self.timeout = timeout
        self.check_with_tool = check_with_tool

    def _databases(self, mongo) -> list[str]:
        if self.database is None:
            return application_databases(mongo)
        # listCollections, not listDatabases: a user with read on this database only can
        # back it up (mongodump --db needs no more); a database without collections is
        # not there at all for MongoDB
        if not mongo[self.database].list_collection_names():
            raise BackupRefused(
                f"database {self.database!r} does not exist on {self.endpoint!r}: nothing to back up "
                "(set mongo.database to the platform's database)"
            )
        return [self.database]

    def dump(self, staging: Path, log: LogFn) -> DumpResult:
        """mongodump, then the description of what the archive holds, read from the archive.

        On a replica-set member the whole instance is dumped with ``--oplog`` (a point in
        time, users and roles in ``admin`` included), even when a database is configured:
        mongodump refuses ``--oplog`` with ``--db``; a restore takes one database out of it.
        """
        archive = Path(staging) / ARCHIVE
        with client(self.endpoint) as mongo:
            server_version = mongo.admin.command("buildInfo").get("version", "unknown")
            set_name = replica_set_name(mongo)
            self._databases(mongo)  # the configured database must exist
            instance_readable = self.database is None or _can_list_databases(mongo)
        whole = self.database is None or (bool(set_name) and instance_readable)
        oplog = bool(set_name) and whole
        if oplog:
            log(f"mongo: replica set {set_name!r}: dumping the whole instance with --oplog (point in time)")
        elif set_name:
            log(
                f"mongo: replica set {set_name!r}, but {self.endpoint.login or 'this user'} may not list the "
                f"instance's databases: dumping {self.database} alone, NOT point-in-time (grant the backup role)"
            )
        else:
            log("mongo: standalone server (no setName): no oplog, the dump is not point-in-time")
        version = tool_version("mongodump", log)
        counts: dict[str, int] = {}

        def capture(line: str) -> None:
            match = _DONE_DUMPING.search(line)
            if match:
                counts[match.group("ns")] = int(match.group("n"))
            log(line)

        started = time.monotonic()
        with tool_config(self.endpoint) as config:
            argv = dump_argv(
                self.endpoint,
                archive,
                database=None if whole else self.database,
                oplog=oplog,
                config=config,
                parallel_collections=self.parallel_collections,
            )
            run_tool(argv, log=capture, progress_path=archive, timeout=self.timeout)
        seconds = round(time.monotonic() - started, 3)
        if not archive.is_file():
            raise ToolError(f"mongodump exited 0 but wrote no {ARCHIVE}")
        archive.chmod(0o600)  # the tool (under wine: the umask) decides otherwise
        # the reference for drills and restores: the archive itself, never a later read
        gz_check, structure, summary = verify_archive(archive, digest=True)
        if summary is None:
            raise ToolError(
                f"mongodump wrote an archive that does not read back: {gz_check.detail}; {structure.detail}"
            )
        databases = [d for d in summary.databases() if d not in SYSTEM_DATABASES]
        with client(self.endpoint) as mongo:
            security = security_description(summary, databases, mongo)
        description = {
            "source": "archive",
            "server_version": server_version,
            "replica_set": set_name,
            "oplog": oplog,
            "oplog_entries": summary.documents.get(OPLOG_NS, 0),
            "databases": describe_archive(summary, databases, security),
            "security_from": security["from"],
        }
        log(
            f"mongo: {len(counts)} collections, {sum(counts.values())} documents, "
            f"{archive.stat().st_size} bytes in {seconds}s; described from the archive "
            f"({description['oplog_entries']} oplog entries)"
        )
        return DumpResult(
            tool="mongodump",
            tool_version=version,
            server_version=server_version,
            compression="gzip",
            details={
                "archive": ARCHIVE,
                "scope": "instance" if whole else "database",
                "databases": databases,
                "database": self.database,
                "collections": dict(sorted(counts.items())),
                "documents": sum(counts.values()),
                "replica_set": set_name,
                "oplog": oplog,
                "dump_seconds": seconds,
            },
            description=description,
        )

    def check(self, backup_dir: Path, manifest: dict[str, Any], log: LogFn) -> list[Check]:
        archive = Path(backup_dir) / ARCHIVE
        if not archive.is_file():
            return [Check("archive", False, f"{archive} missing")]
        started = time.monotonic()
        gz_check, structure, summary = verify_archive(archive)
        checks = [gz_check, structure]
        log(f"mongo check: gzip and archive walk in {time.monotonic() - started:.2f}s")
        details = manifest.get("details", manifest) if isinstance(manifest, dict) else {}
        expected = details.get("collections")
        if summary is not None and expected is not None:
            found = {ns: n for ns, n in summary.documents.items() if ns != OPLOG_NS}
            differ = sorted(
                f"{ns}: manifest {expected.get(ns)}, archive {found.get(ns)}"
                for ns in set(expected) | set(found)
                if expected.get(ns) != found.get(ns)
            )
            checks.append(
                Check(
                    "archive_contents",
                    not differ,
                    "; ".join(differ)
                    if differ
                    else f"documents per namespace equal mongodump's counts ({len(found)} namespaces)",
                )
            )
        if self.check_with_tool and summary is not None:
            checks.append(self._tool_check(archive, summary, log))
        for check in checks:
            log(f"mongo check {check.name}: {'ok' if check.ok else 'FAILED'} {check.detail}")
        return checks

    def _tool_check(self, archive: Path, summary: ArchiveSummary, log: LogFn) -> Check:
        """mongorestore --dryRun -v: reads only the prelude (see the module docstring)."""
        announced: list[str] = []

        def capture(line: str) -> None:
            match = _PRELUDE_LINE.search(line)
            if match:
                announced.append(match.group("ns"))
            log(line)

        started = time.monotonic()
        try:
            with tool_config(self.endpoint) as config:
                argv = dry_run_argv(self.endpoint, archive, config=config)
                run_tool(argv, log=capture, timeout=self.timeout or 300)
        except ToolError as exc:
            return Check("mongorestore_dry_run", False, str(exc))
        seconds = time.monotonic() - started
        if sorted(announced) != sorted(summary.prelude):
            return Check(
                "mongorestore_dry_run",
                False,
                f"mongorestore saw namespaces {sorted(announced)}, the archive walk {sorted(summary.prelude)}",
            )
        return Check(
            "mongorestore_dry_run",
            True,
            f"mongorestore accepts the archive and lists its {len(announced)} namespaces ({seconds:.1f}s); "
            "100.3.1's dry run reads the prelude only",
        )


# ---------------------------------------------------------------------- restore


def restore(
    endpoint: Endpoint,
    backup_dir: Path,
    *,
    from_db: str,
    to_db: str,
    drop: bool = False,
    log: LogFn,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    parallel_collections: int = DEFAULT_PARALLEL_COLLECTIONS,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Restore database ``from_db`` of a backup as ``to_db``; return counts and its description.

    Into a new (or empty) database by default. Restoring over a database that holds
    collections needs ``drop=True`` (mongorestore drops each restored collection first);
    over the live namespace itself, ``to_db == from_db`` *and* ``drop=True``, explicitly.
    An oplog in the archive is not replayed (see :func:`restore_databases`).
    """
    if to_db == from_db and not drop:
        raise ValueError(
            f"refusing to restore over the live database {from_db!r}: restore into another database "
            f"(to_db), or pass to_db == from_db together with drop=True to replace it on purpose"
        )
    outcome = restore_databases(
        endpoint,
        backup_dir,
        {from_db: to_db},
        drop=drop,
        log=log,
        parallel_collections=parallel_collections,
        timeout=timeout,
    )
    return {
        "from_db": from_db,
        "to_db": to_db,
        "drop": drop,
        "documents_restored": outcome["documents_restored"],
        "documents_failed": outcome["documents_failed"],
        "seconds": outcome["seconds"],
        "target": outcome["targets"][to_db],
    }


def restore_databases(
    endpoint: Endpoint,
    backup_dir: Path,
    mapping: dict[str, str],
    *,
    drop: bool = False,
    log: LogFn,
    parallel_collections: int = DEFAULT_PARALLEL_COLLECTIONS,
    timeout: float | None = None,
) -> dict[str, Any]:
    """One mongorestore of every ``source -> target`` database in ``mapping``; returns the
    documents restored and each target's :func:`describe_database`.

    ``mongorestore --oplogReplay`` replays the captured oplog only for a whole-instance
    restore (and SecantusDB answers its applyOps with CommandNotFound): a restore of some
    databases restores the archive's documents as dumped.
    """
    if not mapping:
        raise ValueError("nothing to restore: no databases named")
    for from_db, to_db in mapping.items():
        for name, value in (("from_db", from_db), ("to_db", to_db)):
            if not _DB_NAME.match(value or ""):
                raise ValueError(f"{name}: not a MongoDB database name: {value!r}")
        if to_db in SYSTEM_DATABASES:
            raise ValueError(f"refusing to restore into the system database {to_db!r}")
        if to_db == from_db and not drop:
            raise ValueError(f"refusing to restore over the live database {from_db!r} without drop")
    archive = Path(backup_dir) / ARCHIVE
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: no MongoDB archive in this backup")
    prelude = read_prelude(archive)
    missing = [d for d in mapping if d not in prelude.databases()]
    if missing:
        raise ValueError(f"database {missing[0]!r} is not in this backup (it holds {prelude.databases()})")
    with client(endpoint) as mongo:
        for to_db in mapping.values():
            existing = [n for n in mongo[to_db].list_collection_names() if not n.startswith("system.")]
            if existing and not drop:
                raise ValueError(
                    f"target database {to_db!r} already has collections {sorted(existing)[:10]}: restore into a "
                    "new database, or pass drop=True to replace the collections the backup holds"
                )
        pairs = ", ".join(f"{f}.* -> {t}.*" for f, t in mapping.items())
        log(f"mongo restore: {pairs}{' (dropping each collection first)' if drop else ''}")
        summary: dict[str, int] = {}
        failures: list[str] = []

        def capture(line: str) -> None:
            match = _RESTORE_SUMMARY.search(line)
            if match:
                summary.update(restored=int(match.group("ok")), failed=int(match.group("failed")))
            if "Failed:" in line:
                failures.append(line)
            log(line)

        started = time.monotonic()
        with tool_config(endpoint) as config:
            argv = restore_argv(
                endpoint,
                archive,
                mapping=mapping,
                drop=drop,
                config=config,
                parallel_collections=parallel_collections,
            )
            run_tool(argv, log=capture, timeout=timeout)
        seconds = round(time.monotonic() - started, 3)
        if failures:
            raise ToolError("mongorestore reported failures:\n" + "\n".join(failures[-5:]))
        if "restored" not in summary:
            raise ToolError("mongorestore exited 0 without its summary line: the restore cannot be confirmed")
        if summary["failed"]:
            # 100.3.1 exits 0 when inserts fail (duplicate keys, validation): not a success
            raise ToolError(
                f"mongorestore: {summary['failed']} document(s) failed to restore "
                f"({summary['restored']} restored) into {', '.join(mapping.values())}"
            )
        targets = {to_db: describe_database(mongo[to_db]) for to_db in mapping.values()}
    log(f"mongo restore: {summary['restored']} documents into {', '.join(mapping.values())} in {seconds}s")
    return {
        "documents_restored": summary["restored"],
        "documents_failed": summary["failed"],
        "seconds": seconds,
        "targets": targets,
    }
