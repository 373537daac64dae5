"""What a drill or restore tolerates when it compares a restored copy with the backup's
description, store by store (pure: descriptions in, differences and notes out)."""

from __future__ import annotations

from dbops.stores.mongo import recovery as mongo_recovery
from dbops.stores.postgres import recovery as pg_recovery
from dbops.stores.redis import recovery as redis_recovery


def _redis(keys, sample="all", databases=None):
    return {"keys": keys, "sample": sample, "match": None, "databases": databases or {}, "matched": {}}


def test_redis_comparison_tolerates_only_expired_volatile_keys():
    source = _redis(
        {
            "0:session:a": {"type": "string", "expires": True, "digest": "1"},
            "0:cache:b": {"type": "hash", "expires": False, "digest": "2"},
            "0:stats:c": {"type": "zset", "expires": False, "digest": "3"},
        }
    )
    restored = _redis(
        {
            "0:cache:b": {"type": "hash", "expires": False, "digest": "2"},
            "0:stats:c": {"type": "zset", "expires": False, "digest": "3"},
        }
    )
    differences, notes = redis_recovery.compare_redis(source, restored)
    assert differences == [] and "expired since the backup" in notes[0]

    del restored["keys"]["0:cache:b"]
    restored["keys"]["0:stats:c"] = {"type": "zset", "expires": False, "digest": "X"}
    restored["keys"]["0:other"] = {"type": "string", "expires": False, "digest": "4"}
    differences, _ = redis_recovery.compare_redis(source, restored)
    assert differences[0] == "key 0:cache:b missing"
    assert differences[1] == "key 0:other unexpected"
    assert differences[2].startswith("key 0:stats:c:")


def test_redis_comparison_of_a_sampled_source_checks_counts():
    source = _redis(
        {"0:k": {"type": "string", "expires": False, "digest": "1"}},
        sample="sha1-prefix-0",
        databases={"0": {"keys": 20000, "expires": 100}},
    )
    restored = {
        **_redis({"0:k": {"type": "string", "expires": False, "digest": "1"}, "0:z": {}}),
        "matched": {"0": 19950},
    }
    differences, notes = redis_recovery.compare_redis(source, restored)
    assert differences == [] and any("sampled" in n for n in notes)  # unexpected keys cannot be judged
    restored["matched"] = {"0": 19000}
    assert redis_recovery.compare_redis(source, restored)[0] == [
        "db 0: 19000 keys restored, the source had 20000 (100 with a TTL)"
    ]


def _coll(count, ttl=None, digest="s"):
    index = {"name": "last_updated_1", "key": [["last_updated", 1]], "unique": False, "expireAfterSeconds": ttl}
    return {"count": count, "indexes": [index], "digest": digest}


def test_mongo_comparison_tolerates_ttl_removals_only_when_every_document_was_restored():
    source = {"collections": {"task_status_cache": _coll(10, ttl=86400, digest="a"), "logs": _coll(5, digest="b")}}
    restored = {
        "collections": {
            "task_status_cache": _coll(7, ttl=86400, digest="c"),
            "logs": _coll(5, digest="b"),
            mongo_recovery.MONGO_MARKER: {"count": 1},
        }
    }
    differences, notes = mongo_recovery.compare_mongo(source, restored, dumped=15, restored=15)
    assert differences == [] and "3 document(s) already removed by its TTL index" in notes[0]
    # mongorestore restored fewer than the archive holds: no tolerance, and it is named
    differences, notes = mongo_recovery.compare_mongo(source, restored, dumped=15, restored=12)
    assert differences[0] == "mongorestore restored 12 documents, the archive holds 15"
    assert any("task_status_cache: count" in d for d in differences) and notes == []


def test_mongo_comparison_sees_lost_documents_and_indexes():
    source = {"collections": {"logs": _coll(5, digest="b"), "cache": _coll(3, ttl=60)}}
    restored = {"collections": {"logs": _coll(4, digest="b"), "cache": _coll(3, ttl=120)}}
    differences, _ = mongo_recovery.compare_mongo(source, restored, dumped=8, restored=8)
    assert any(d.startswith("collection logs: count 5 != 4") for d in differences)
    assert any(d.startswith("collection cache: indexes") for d in differences)


GLOBALS = '''--
-- PostgreSQL database cluster dump
--
CREATE ROLE app_reader;
ALTER ROLE app_reader WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:x';
CREATE ROLE "Odd ""Name""";
ALTER ROLE "Odd ""Name""" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
--
-- PostgreSQL database cluster dump complete
--
'''  # noqa: E501 - pg_dumpall's output, verbatim


def test_roles_in_globals_are_parsed_and_compared():
    roles = pg_recovery.roles_in_globals(GLOBALS)
    assert roles == {
        "app_reader": {"superuser": False, "can_login": True},
        "postgres": {"superuser": True, "can_login": True},
        'Odd "Name"': {"superuser": False, "can_login": False},
    }
    source = {"roles": {**roles, "postgres": {"superuser": True, "can_login": True}}}
    assert pg_recovery.compare_roles(source, roles) == []
    source["roles"]["etl"] = {"superuser": False, "can_login": True}
    source["roles"]["app_reader"] = {"superuser": True, "can_login": True}
    assert pg_recovery.compare_roles(source, roles) == [
        "role etl missing",
        "role app_reader: superuser False, the source had True",
    ]


def test_roles_that_changed_while_pg_dumpall_ran_are_not_judged():
    """A role created or dropped during the dump may or may not be in globals.sql; a role
    that was there before and after must be, with the same attributes."""
    roles = pg_recovery.roles_in_globals(GLOBALS)
    source = {"roles": dict(roles), "changed_during_dump": ["etl_new", "app_reader"]}
    del source["roles"]["app_reader"]  # dropped meanwhile: may still be in the file
    got = {**roles, "etl_new": {"superuser": False, "can_login": True}}  # created meanwhile: in the file
    assert pg_recovery.compare_roles(source, got) == []
    del got["postgres"]
    assert pg_recovery.compare_roles(source, got) == ["role postgres missing"]
