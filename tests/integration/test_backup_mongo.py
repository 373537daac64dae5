"""MongoBackup against the real local server (SecantusDB) and the real mongodump /
mongorestore 100.3.1 (Windows build under wine, on PATH through ``.devstack/bin``).

Every test works in its own uniquely named databases and drops them afterwards.
"""

from __future__ import annotations

import gzip
import stat
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from bson import Decimal128

from dbops.backup.adapter import Endpoint
from dbops.stores.mongo import backup as mb
from dbops.tools import run_tool as real_run_tool
from tests.support import mongo_client

pytestmark = pytest.mark.integration


def _unique(prefix: str = "dbops_test_bk") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def mongo_conn(devstack) -> dict:
    return devstack.conn("dbops_mongo")


@pytest.fixture
def endpoint(mongo_conn) -> Endpoint:
    return Endpoint(
        host=mongo_conn["host"],
        port=mongo_conn["port"],
        login=mongo_conn["login"],
        password=mongo_conn["password"],
        database=mongo_conn["schema"],
        extra=dict(mongo_conn["extra"]),
    )


@pytest.fixture
def mongo(mongo_conn):
    client = mongo_client(mongo_conn)
    yield client
    client.close()


@pytest.fixture
def scratch(mongo):
    """Makes unique database names; every one is dropped afterwards."""
    names: list[str] = []

    def make() -> str:
        names.append(_unique())
        return names[-1]

    yield make
    for name in names:
        mongo.drop_database(name)


class ToolSpy:
    """Wraps dbops' run_tool: records every argv, the --config file seen, every log line."""

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []
        # path, file mode, text, folder mode: as seen while the tool ran
        self.configs: list[tuple[Path, int, str, int]] = []
        self.lines: list[str] = []
        self.before = None  # called with the argv just before the tool starts

    def log(self, line: str) -> None:
        self.lines.append(line)

    def run_tool(self, argv, **kwargs):
        argv = list(argv)
        self.argvs.append(argv)
        for arg in argv:
            if arg.startswith("--config="):
                path = Path(arg.split("=", 1)[1])
                file_mode, folder_mode = stat.S_IMODE(path.stat().st_mode), stat.S_IMODE(path.parent.stat().st_mode)
                self.configs.append((path, file_mode, path.read_text(), folder_mode))
        if self.before is not None:
            self.before(argv)
        return real_run_tool(argv, **kwargs)


@pytest.fixture
def spy(monkeypatch) -> ToolSpy:
    tool_spy = ToolSpy()
    monkeypatch.setattr(mb, "run_tool", tool_spy.run_tool)
    return tool_spy


def _seed(mongo, name: str, count: int = 240) -> None:
    db = mongo[name]
    now = datetime.now(UTC).replace(microsecond=0)
    db.events.insert_many(
        [
            {
                "_id": i,
                "task_id": f"task-{i:04d}",
                "last_updated": now - timedelta(seconds=i),
                "n": i * 1.5,
                "big": 2**40 + i,
                "price": Decimal128(Decimal(f"{i}.25")),
                "tags": ["a", {"b": i}],
                "payload": {"z": 1, "a": "x" * (i % 11)},
            }
            for i in range(count)
        ]
    )
    db.events.create_index("last_updated", expireAfterSeconds=86400, name="last_updated_ttl")
    db.events.create_index("task_id", unique=True, name="task_id_unique")
    db.configs.insert_many([{"key": f"k{i}", "value": i} for i in range(5)])


def _dump(adapter: mb.MongoBackup, tmp_path: Path, log) -> tuple[Path, dict]:
    staging = tmp_path / "staging"
    staging.mkdir(mode=0o700)
    result = adapter.dump(staging, log)
    return staging, {"details": result.details, "tool_version": result.tool_version, "description": result.description}


# --------------------------------------------------------------------------- round trip


def test_dump_check_restore_under_another_name_describes_equal(endpoint, mongo, scratch, spy, tmp_path):
    source, target = scratch(), scratch()
    _seed(mongo, source)
    adapter = mb.MongoBackup(endpoint, source)

    staging, manifest = _dump(adapter, tmp_path, spy.log)
    archive = staging / mb.ARCHIVE
    assert archive.read_bytes()[:2] == b"\x1f\x8b"
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    details = manifest["details"]
    # a replica-set member: the whole instance, point in time, whatever database is configured
    assert source in details["databases"] and details["scope"] == "instance"
    ours = {ns: n for ns, n in details["collections"].items() if ns.startswith(f"{source}.")}
    assert ours == {f"{source}.events": 240, f"{source}.configs": 5}
    assert details["oplog"] is True and details["replica_set"] == "secantus"
    assert any(arg == "--oplog" for arg in spy.argvs[-1]) and not any(a.startswith("--db") for a in spy.argvs[-1])
    assert manifest["tool_version"].startswith("100.")

    checks = adapter.check(staging, manifest, spy.log)
    assert [c.name for c in checks] == ["gzip", "archive_structure", "archive_contents", "mongorestore_dry_run"]
    assert all(c.ok for c in checks), checks

    outcome = mb.restore(endpoint, staging, from_db=source, to_db=target, log=spy.log)
    assert outcome["documents_restored"] == 245 and outcome["documents_failed"] == 0

    described = manifest["description"]["databases"][source]  # read from the archive
    assert mb.compare_databases(described, outcome["target"]) == []
    assert mb.compare_databases(described, mb.describe_database(mongo[target])) == []
    events = outcome["target"]["collections"]["events"]
    assert events["count"] == 240
    indexes = {ix["name"]: ix for ix in events["indexes"]}
    assert indexes["last_updated_ttl"]["expireAfterSeconds"] == 86400
    assert indexes["last_updated_ttl"]["key"] == [["last_updated", 1]]
    assert indexes["task_id_unique"]["unique"] is True
    assert events["digest"] == described["collections"]["events"]["digest"]
    # and the data itself
    assert list(mongo[target].events.find().sort("_id", 1)) == list(mongo[source].events.find().sort("_id", 1))

    # the source is untouched, nothing else was restored (--nsInclude)
    assert mongo[source].events.count_documents({}) == 240


def test_describe_sees_a_difference(endpoint, mongo, scratch, spy, tmp_path):
    source, target = scratch(), scratch()
    _seed(mongo, source, count=30)
    staging, _ = _dump(mb.MongoBackup(endpoint, source), tmp_path, spy.log)
    outcome = mb.restore(endpoint, staging, from_db=source, to_db=target, log=spy.log)
    mongo[target].events.update_one({"_id": 3}, {"$set": {"n": -1}})
    mongo[target].events.drop_index("last_updated_ttl")
    problems = mb.compare_databases(outcome["target"], mb.describe_database(mongo[target]))
    assert any("digest" in p for p in problems) and any("indexes" in p for p in problems), problems


# --------------------------------------------------------------------------- check


def test_check_fails_on_a_flipped_byte_and_on_a_truncated_archive(endpoint, mongo, scratch, spy, tmp_path):
    source = scratch()
    _seed(mongo, source)
    adapter = mb.MongoBackup(endpoint, source)
    staging, manifest = _dump(adapter, tmp_path, spy.log)
    good = (staging / mb.ARCHIVE).read_bytes()

    flipped = tmp_path / "flipped"
    flipped.mkdir()
    data = bytearray(good)
    data[len(data) // 2] ^= 0x01
    (flipped / mb.ARCHIVE).write_bytes(bytes(data))
    checks = {c.name: c for c in adapter.check(flipped, manifest, spy.log)}
    assert not checks["gzip"].ok and not checks["archive_structure"].ok, checks

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / mb.ARCHIVE).write_bytes(good[: len(good) * 2 // 3])
    checks = {c.name: c for c in adapter.check(truncated, manifest, spy.log)}
    assert not checks["gzip"].ok, checks

    # a well-formed gzip around a body cut short: gzip is happy, mongorestore --dryRun
    # (prelude only) would be too, the archive walk is not
    inner = gzip.decompress(good)
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / mb.ARCHIVE).write_bytes(gzip.compress(inner[: len(inner) * 2 // 3]))
    checks = {c.name: c for c in adapter.check(cut, manifest, spy.log)}
    assert checks["gzip"].ok and not checks["archive_structure"].ok, checks
    dry_run = run_dry_run(endpoint, cut / mb.ARCHIVE, spy)
    assert "dry run completed" in dry_run  # what the module docstring says about 100.3.1

    # counts that disagree with what mongodump reported are a failure too
    wrong = {"details": {**manifest["details"], "collections": {f"{source}.events": 239, f"{source}.configs": 5}}}
    checks = {c.name: c for c in adapter.check(staging, wrong, spy.log)}
    assert checks["gzip"].ok and checks["archive_structure"].ok and not checks["archive_contents"].ok


def run_dry_run(endpoint: Endpoint, archive: Path, spy: ToolSpy) -> str:
    lines: list[str] = []
    with mb.tool_config(endpoint) as config:
        spy.run_tool(mb.dry_run_argv(endpoint, archive, config=config), log=lines.append, timeout=120)
    return "\n".join(lines)


# --------------------------------------------------------------------------- restore rules


def test_restore_refuses_the_live_namespace_without_drop_and_replaces_it_with_drop(
    endpoint, mongo, scratch, spy, tmp_path
):
    source, other = scratch(), scratch()
    _seed(mongo, source, count=50)
    adapter = mb.MongoBackup(endpoint, source)
    staging, manifest = _dump(adapter, tmp_path, spy.log)
    before = manifest["description"]["databases"][source]
    calls = len(spy.argvs)

    with pytest.raises(ValueError, match="refusing to restore over the live database"):
        mb.restore(endpoint, staging, from_db=source, to_db=source, log=spy.log)
    mongo[other].keep.insert_one({"x": 1})
    with pytest.raises(ValueError, match="already has collections"):
        mb.restore(endpoint, staging, from_db=source, to_db=other, log=spy.log)
    with pytest.raises(ValueError, match="is not in this backup"):
        mb.restore(endpoint, staging, from_db=_unique(), to_db=_unique(), log=spy.log)
    with pytest.raises(ValueError, match="system database"):
        mb.restore(endpoint, staging, from_db=source, to_db="admin", drop=True, log=spy.log)
    assert len(spy.argvs) == calls  # refused before any tool ran

    # the live database changes after the backup; an explicit drop restore brings it back
    mongo[source].events.delete_many({"_id": {"$lt": 10}})
    mongo[source].events.insert_one({"_id": 999, "task_id": "late"})
    outcome = mb.restore(endpoint, staging, from_db=source, to_db=source, drop=True, log=spy.log)
    assert "--drop" in spy.argvs[-1]
    assert mb.compare_databases(before, outcome["target"]) == []
    assert mongo[other].keep.count_documents({}) == 1


def test_a_restore_with_failed_documents_is_an_error(endpoint, mongo, scratch, spy, tmp_path):
    """mongorestore 100.3.1 exits 0 when inserts fail; restore() must not call that a success.
    Here a writer puts a conflicting document into the (checked, empty) target just
    before mongorestore starts."""
    source, target = scratch(), scratch()
    _seed(mongo, source, count=20)
    staging, _ = _dump(mb.MongoBackup(endpoint, source), tmp_path, spy.log)

    def concurrent_writer(argv: list[str]) -> None:
        if "mongorestore" in Path(argv[0]).name and "--dryRun" not in argv:
            mongo[target].events.insert_one({"_id": 0, "intruder": True})

    spy.before = concurrent_writer
    with pytest.raises(mb.ToolError, match="1 document\\(s\\) failed to restore"):
        mb.restore(endpoint, staging, from_db=source, to_db=target, log=spy.log)
    assert any("0 failures" not in line and "failure" in line for line in spy.lines)


def test_dump_of_a_missing_database_is_refused(endpoint, scratch, spy, tmp_path):
    adapter = mb.MongoBackup(endpoint, scratch())
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(ValueError, match="does not exist"):
        adapter.dump(staging, spy.log)
    assert not any(staging.iterdir()) and spy.argvs == []


# --------------------------------------------------------------------------- secrets


def test_password_only_in_a_0600_config_file_that_is_gone_afterwards(endpoint, mongo, scratch, spy, tmp_path):
    source, target = scratch(), scratch()
    _seed(mongo, source, count=10)
    adapter = mb.MongoBackup(endpoint, source)
    staging, manifest = _dump(adapter, tmp_path, spy.log)
    adapter.check(staging, manifest, spy.log)
    mb.restore(endpoint, staging, from_db=source, to_db=target, log=spy.log)

    password = endpoint.password
    assert password and len(spy.argvs) >= 4  # --version, dump, dry run, restore
    for argv in spy.argvs:
        assert not any(password in arg for arg in argv), argv
    assert not any(password in line for line in spy.lines)
    assert len(spy.configs) == 3  # dump, dry run, restore: each with its own file
    for path, mode, text, folder_mode in spy.configs:
        assert mode == 0o600 and folder_mode == 0o700
        assert "password:" in text
        assert not path.exists() and not path.parent.exists()
    assert len({path for path, *_ in spy.configs}) == 3
    assert password not in repr(endpoint)


def test_argv_builders_never_hold_the_secret(tmp_path):
    secret = "Sup3r-secret!"
    ep = Endpoint(
        "db.example",
        27017,
        "backup",
        secret,
        "ai_platform",
        {"authSource": "admin", "tls": True, "tlsCAFile": "/etc/ca.pem", "tlsCertificateKeyFilePassword": "key-secret"},
    )
    config = tmp_path / "tools.yaml"
    argvs = [
        mb.dump_argv(ep, tmp_path / "a.gz", database=None, oplog=True, config=config),
        mb.restore_argv(ep, tmp_path / "a.gz", from_db="x", to_db="y", drop=True, config=config),
        mb.dry_run_argv(ep, tmp_path / "a.gz", config=config),
    ]
    for argv in argvs:
        joined = " ".join(argv)
        assert secret not in joined and "key-secret" not in joined
        assert "--username=backup" in argv and "--authenticationDatabase=admin" in argv and "--ssl" in argv
    assert "--oplog" in argvs[0] and not any(a.startswith("--db") for a in argvs[0])
    assert "--nsInclude=x.*" in argvs[1] and "--drop" in argvs[1]
    srv = Endpoint("cluster.example", 27017, "backup", secret, None, {"srv": True})
    assert secret not in " ".join(mb.connection_args(srv))


def test_config_text_quotes_any_password_for_the_tools_yaml_parser():
    import yaml  # YAML 1.1, as go-yaml v2 that the tools use

    for password in ["plain", 'quo"te', "back\\slash", "colon: hash #", "é\u2028line", "emoji \U0001f600", " lead"]:
        text = mb.config_text(Endpoint("h", 1, "u", password))
        assert yaml.safe_load(text) == {"password": password}
    assert mb.config_text(Endpoint("h", 1)) is None


def test_an_awkward_password_reaches_mongodump_intact(mongo, scratch, spy, tmp_path, mongo_conn):
    """A scratch user whose password needs YAML quoting (quotes, backslash, colon, hash,
    non-ASCII); read-only on one database, which is all a single-database dump needs."""
    source = scratch()
    _seed(mongo, source, count=7)
    user = _unique("dbops_test_user")
    password = "p\"a\\ss: w#o'rd é {x} &*!"
    mongo.admin.command("createUser", user, pwd=password, roles=[{"role": "read", "db": source}])
    try:
        ep = Endpoint(mongo_conn["host"], mongo_conn["port"], user, password, None, {"authSource": "admin"})
        adapter = mb.MongoBackup(ep, source)
        staging, manifest = _dump(adapter, tmp_path, spy.log)
        assert manifest["details"]["collections"][f"{source}.events"] == 7
        # read on one database only: no whole-instance dump, and it says it is not point-in-time
        assert manifest["details"]["scope"] == "database" and manifest["details"]["oplog"] is False
        assert any("NOT point-in-time" in line for line in spy.lines)
        assert all(c.ok for c in adapter.check(staging, manifest, spy.log))

        wrong = mb.MongoBackup(Endpoint(ep.host, ep.port, user, "not-it", None, {"authSource": "admin"}), source)
        with pytest.raises(Exception, match="(?i)auth"):
            wrong.dump(tmp_path / "never", spy.log)
    finally:
        mongo.admin.command("dropUser", user)
    for argv in spy.argvs:
        assert not any(password in arg for arg in argv)
    assert not any(password in line for line in spy.lines)
