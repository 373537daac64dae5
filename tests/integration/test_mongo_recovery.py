"""MongoAdapter against the real local server (SecantusDB as a one-member replica set) and the
real mongodump/mongorestore 100.3.1: a point-in-time whole-instance backup of a busy
database, described from its own archive; drills and restores judged by that description;
an overwrite that is restored beside the live database and swapped in.

mongodump/mongorestore cost 2-3 s each under wine: one backup is shared by the module.
"""

from __future__ import annotations

import itertools
import random
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dbops.backup.adapter import DrillComparison, DrillEnvironmentError, Endpoint, RestoreRefused, RestoreRequest
from dbops.stores.mongo import backup as mb
from dbops.stores.mongo import recovery
from dbops.tools import ToolError
from tests.support import mongo_client

pytestmark = pytest.mark.integration

DRILL_CONN = "dbops_drill_mongo"
_NEW_IDS = itertools.count(100_000)  # ids the writers insert, unique across the module


def _unique(prefix: str = "dbops_test_rc") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _endpoint(conn: dict, **changes) -> Endpoint:
    fields = dict(
        host=conn["host"],
        port=conn["port"],
        login=conn["login"],
        password=conn["password"],
        database=conn["schema"],
        extra=dict(conn["extra"]),
    )
    fields.update(changes)
    return Endpoint(**fields)


class _Links:
    """What the task layer passes (dbops.runtime), reduced to Airflow connection ids -> endpoints."""

    def __init__(self, endpoints: dict[str, Endpoint]) -> None:
        self.endpoints = endpoints
        self.asked: list[str] = []

    def endpoint(self, conn_id: str, store: str) -> Endpoint:
        self.asked.append(conn_id)
        return self.endpoints[conn_id]

    def connection_exists(self, conn_id: str) -> bool:
        return conn_id in self.endpoints


def _adapter(database: str, endpoints: dict[str, Endpoint]):
    from dbops.config import DbopsConfig
    from dbops.stores.mongo.adapter import MongoAdapter

    config = DbopsConfig.model_validate({"mongo": {"database": database}})
    return MongoAdapter(config, _Links(endpoints))


class _Writer:
    """Inserts, updates and deletes in ``db.events`` for as long as it runs."""

    def __init__(self, db) -> None:
        self.db, self.stop, self.rounds = db, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(7)
        while not self.stop.is_set():
            new_id = next(_NEW_IDS)
            self.db.events.insert_one(
                {"_id": new_id, "task_id": f"w-{new_id}", "n": 0, "last_updated": datetime.now(UTC)}
            )
            self.db.events.update_one({"_id": rng.randrange(300)}, {"$inc": {"n": 1}, "$set": {"touched": True}})
            self.db.events.delete_one({"_id": rng.randrange(300)})
            self.rounds += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)


class Logs(list):
    def __call__(self, line: str) -> None:
        self.append(line)


@pytest.fixture(scope="module")
def conn(devstack) -> dict:
    return devstack.conn("dbops_mongo")


@pytest.fixture(scope="module")
def mongo(conn):
    client = mongo_client(conn)
    yield client
    client.close()


@pytest.fixture(scope="module")
def taken(conn, mongo, tmp_path_factory):
    """One backup of a busy database (a writer inserts, updates, deletes throughout)."""
    from dbops.backup.repository import BackupRepository
    from dbops.backup.runner import take_backup

    database = _unique()
    db = mongo[database]
    now = datetime.now(UTC).replace(microsecond=0)
    db.events.insert_many(
        [
            {
                "_id": i,
                "task_id": f"t-{i}",
                "n": i,
                "last_updated": now - timedelta(seconds=i),
                "payload": {"z": 1, "a": "x" * (i % 7)},
            }
            for i in range(3000)
        ]
    )
    db.events.create_index("last_updated", expireAfterSeconds=86400, name="last_updated_ttl")
    db.events.create_index("task_id", unique=True, name="task_id_unique")
    db.configs.insert_many([{"key": f"k{i}", "value": i} for i in range(5)])
    db.command("createUser", "rc_reader", pwd=uuid.uuid4().hex, roles=[{"role": "read", "db": database}])
    db.command(
        "createRole",
        "rc_role",
        roles=[],
        privileges=[{"resource": {"db": database, "collection": "configs"}, "actions": ["find"]}],
    )
    adapter = _adapter(database, {"dbops_mongo": _endpoint(conn)})
    repo = BackupRepository(tmp_path_factory.mktemp("repo"))
    logs = Logs()
    with _Writer(db) as writer:
        take_backup(
            repo,
            adapter.series_backup(None),
            store="mongo",
            subject=None,
            run_id=_unique("run"),
            dag_id="test",
            logical_date=None,
            force=False,
            stale_staging=timedelta(hours=1),
            log=logs,
        )
        rounds_during_dump = writer.rounds
    backup = repo.list("mongo")[-1]
    yield {"database": database, "repo": repo, "backup": backup, "logs": logs, "rounds": rounds_during_dump}
    for name in [database, *[n for n in mongo.list_database_names() if n.startswith(database)]]:
        mongo[name].command("dropAllUsersFromDatabase")
        mongo[name].command("dropAllRolesFromDatabase")
        mongo.drop_database(name)


def test_busy_backup_is_point_in_time_and_described_from_its_archive(taken):
    """Defect 4: on a replica-set member the whole instance is dumped with --oplog even though
    a database is configured; defect 1: the description comes from the archive."""
    from dbops.backup.runner import source_description

    backup, database = taken["backup"], taken["database"]
    details = backup.manifest["details"]
    assert taken["rounds"] > 0, "the writer did not run during the dump"
    assert details["replica_set"] == "secantus" and details["oplog"] is True and details["scope"] == "instance"
    assert database in details["databases"]
    described = source_description(backup)
    assert described["source"] == "archive" and described["oplog"] is True
    events = described["databases"][database]["collections"]["events"]
    assert events["count"] == details["collections"][f"{database}.events"]  # the archive's own count
    assert len(events["digest"]) == 64
    assert {ix["name"] for ix in events["indexes"]} == {"_id_", "last_updated_ttl", "task_id_unique"}
    users = described["databases"][database]["users"]
    roles = described["databases"][database]["roles"]
    assert users == [{"user": "rc_reader", "roles": [["read", database]]}]
    assert [r["role"] for r in roles] == ["rc_role"]
    assert any("--oplog" in line for line in taken["logs"])


def test_drill_and_restore_of_a_busy_backup_pass_and_a_changed_document_fails(taken, conn, mongo):
    """Defects 1 and 9: with the writer still running, the drill (into production, said in the
    log: no drill connection) and a restore pass; one changed document fails the comparison."""
    backup, database = taken["backup"], taken["database"]
    adapter = _adapter(database, {"dbops_mongo": _endpoint(conn)})
    logs = Logs()
    found = DrillComparison()
    with _Writer(mongo[database]) as writer:
        adapter.drill(backup, found, logs)
        assert found.differences == [], found.differences
        assert not found.leftovers
        assert any("production server" in line for line in logs)
        assert not [n for n in mongo.list_database_names() if n.startswith("dbops_drill_") and database in n]
        # users and roles: recorded, and the drill says what this server leaves out of the archive
        assert any("users and roles" in note for note in found.notes)

        target = _unique("dbops_test_rt")
        request = RestoreRequest(store="mongo", backup_id=backup.backup_id, target=target)
        adapter.check_request(request)
        plan = adapter.plan_restore(backup, request, logs)
        assert plan.source == database and not plan.exists and not plan.overwrite
        result = adapter.restore(backup, type(plan).from_dict(plan.to_dict()), logs)
    assert writer.rounds > 0 and writer.thread.is_alive() is False
    try:
        assert result["differences"] == [], result["differences"]
        assert result["documents_restored"] == backup.manifest["details"]["documents"] - sum(
            n for ns, n in backup.manifest["details"]["collections"].items() if not ns.startswith(f"{database}.")
        )
        # a rerun finds its marker and compares again: one changed document must fail it
        mongo[target].events.update_one({"_id": 2999}, {"$set": {"n": -1}})
        again = adapter.restore(backup, adapter.plan_restore(backup, request, logs), logs)
        assert again["already"] is True
        assert any(d.startswith("collection events: digest") for d in again["differences"]), again["differences"]
    finally:
        mongo.drop_database(target)


def test_failed_overwrite_leaves_the_live_database_whole_and_a_good_one_sets_it_aside(taken, conn, mongo, monkeypatch):
    """Defect 8: restoring over the live database goes beside it and swaps; a mongorestore that
    dies half-way leaves the live database as it was (the old code dropped it in place)."""
    backup, database = taken["backup"], taken["database"]
    adapter = _adapter(database, {"dbops_mongo": _endpoint(conn)})
    logs = Logs()
    live = mongo[database]
    live.events.update_one({"_id": 1}, {"$set": {"after_backup": True}})
    before = mb.describe_database(live)

    with pytest.raises(RestoreRefused, match="confirm_overwrite"):
        adapter.plan_restore(backup, RestoreRequest(store="mongo", backup_id=backup.backup_id, target=database), logs)
    request = RestoreRequest(store="mongo", backup_id=backup.backup_id, target=database, confirm=database)
    plan = adapter.plan_restore(backup, request, logs)
    aside = plan.details["aside"]
    assert plan.overwrite and any("set aside" in a and aside in a for a in plan.actions), plan.actions

    real_run_tool = mb.run_tool

    def dies_after_restoring(argv, **kwargs):
        out = real_run_tool(argv, **kwargs)
        if "mongorestore" in Path(argv[0]).name:
            raise ToolError("mongorestore killed (simulated)")
        return out

    monkeypatch.setattr(mb, "run_tool", dies_after_restoring)
    with pytest.raises(ToolError, match="simulated"):
        adapter.restore(backup, plan, logs)
    assert mb.compare_databases(before, mb.describe_database(live)) == []
    assert plan.details["staged"] not in mongo.list_database_names()
    monkeypatch.setattr(mb, "run_tool", real_run_tool)

    result = adapter.restore(backup, plan, logs)
    assert result["differences"] == [], result["differences"]
    assert result["replaced"] and result["set_aside"] == aside
    assert live.events.find_one({"_id": 1}).get("after_backup") is None  # the backup's version
    # the previous collections are kept whole beside it
    kept = mb.describe_database(mongo[aside])
    assert mb.compare_databases(before, kept) == []
    # a restore over the live database leaves no marker collection in it
    assert recovery.MONGO_MARKER not in live.list_collection_names()


def test_drill_uses_the_drill_connection_and_an_unreachable_server_is_an_environment_error(taken, conn):
    """Defect 9: with a dbops_drill_mongo connection the drill goes there (not production);
    when that server cannot be reached it is an error of the drill, not of the backup."""
    backup, database = taken["backup"], taken["database"]
    down = _endpoint(conn, port=_free_port(), extra={**conn["extra"], "serverSelectionTimeoutMS": 1500})
    adapter = _adapter(database, {"dbops_mongo": _endpoint(conn), DRILL_CONN: down})
    assert all(DRILL_CONN in t for t in adapter.drill_target(backup))
    logs = Logs()
    with pytest.raises(DrillEnvironmentError, match="unreachable"):
        adapter.drill(backup, DrillComparison(), logs)
    assert adapter.links.asked[-1] == DRILL_CONN
    assert not any("production server" in line for line in logs)


def test_check_request_refuses_bad_names_without_io(taken):
    adapter = _adapter(taken["database"], {})
    for params, message in (
        ({"target": "admin"}, "system database"),
        ({"database": "a.b"}, "not a MongoDB database name"),
        ({"target": "dbops_drill_x"}, "restore drills"),
        ({"target": "x_dbops_old_1234"}, "scratch database"),
        ({"topics": ("t",)}, "kafka only"),
    ):
        with pytest.raises(RestoreRefused, match=message):
            adapter.check_request(RestoreRequest(store="mongo", backup_id="latest", **params))
    assert adapter.restore_subject(RestoreRequest(store="mongo", backup_id="latest")) is None
    assert adapter.series(print) == [None]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
