"""dbops_pg_maintenance, dbops_table_size_monitor and dbops_health as Airflow runs them
(``dag.test``), against a scratch database (the dbops_postgres connection is pointed at it)
and the real local Redis, Mongo and Kafka."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from dbops.migrations import MigrationRunner
from dbops.report import StoreReport
from dbops.stores.postgres.bootstrap import migrations
from tests.conftest import run_dag, task_result
from tests.support import kafka_admin, pg_connect, task_states

pytestmark = pytest.mark.integration


def maint_conf(**params) -> dict:
    """Every Param, explicitly: in-process ``dag.test`` leaves a run's conf in the DAG's Param objects."""
    return {"dry_run": False, "vacuum_full_tables": [], "reindex_schemas": [], "window_minutes": None, **params}


HEALTH = {"stores": ["postgres", "redis", "mongo", "kafka"]}


@pytest.fixture
def target(dagbag, scratch_pg, monkeypatch, tmp_path):
    """Bootstrap a scratch database and point dbops_postgres and the reports at it / tmp_path."""
    conn, name = scratch_pg
    with pg_connect(conn, name) as c:
        MigrationRunner(c, migrations()).run(StoreReport("postgres"))
    pointed = {
        "conn_type": "postgres",
        "host": conn["host"],
        "port": conn["port"],
        "login": conn["login"],
        "password": conn["password"],
        "schema": name,
    }
    monkeypatch.setenv("AIRFLOW_CONN_DBOPS_POSTGRES", json.dumps(pointed))
    overrides: dict = {"monitor": {"reports_dir": str(tmp_path / "reports")}}

    def configure(**sections):
        for section, values in sections.items():
            overrides.setdefault(section, {}).update(values)
        monkeypatch.setenv("AIRFLOW_VAR_DBOPS_CONFIG", json.dumps(overrides))

    configure()
    return conn, name, configure, tmp_path / "reports"


def bloat(conn, name) -> None:
    with pg_connect(conn, name, autocommit=True) as c:
        c.execute("CREATE SCHEMA maint")
        c.execute(
            "CREATE TABLE maint.events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, k int, payload text)"
            " WITH (autovacuum_enabled = false)"
        )
        c.execute("CREATE INDEX events_k ON maint.events (k)")
        c.execute("CREATE INDEX events_payload_unused ON maint.events (payload)")
        c.execute("INSERT INTO maint.events (k, payload) SELECT g, md5(g::text) FROM generate_series(1, 100000) g")
        c.execute("DELETE FROM maint.events WHERE id % 10 <> 0")
        c.execute("ANALYZE maint.events")
        c.execute("CREATE TABLE maint.small (id int PRIMARY KEY)")
        # a leftover of a failed REINDEX CONCURRENTLY of events_k
        with pg_connect(conn, name) as holder:
            holder.execute("INSERT INTO maint.events (k, payload) VALUES (0, 'holder')")
            c.execute("SET lock_timeout = '300ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                c.execute("REINDEX INDEX CONCURRENTLY maint.events_k")
            holder.rollback()


def journal(conn, name, run_id):
    with pg_connect(conn, name) as c:
        rows = c.execute(
            "SELECT DISTINCT ON (kind, target) kind, target, action FROM dbops.maintenance_report "
            "WHERE run_id = %s ORDER BY kind, target, id DESC",
            (run_id,),
        ).fetchall()
    return {(k, t): a for k, t, a in rows}


def test_maintenance_runs_green_and_does_the_work(dagbag, target):
    conn, name, configure, _ = target
    bloat(conn, name)
    configure(maintenance={"schemas": ["maint"], "reindex_min_bytes": 0})
    dag = dagbag.get_dag("dbops_pg_maintenance")

    run = run_dag(dag, maint_conf(vacuum_full_tables=["maint.small"]), respond="Approve")
    assert run.state == "success", task_states(run)
    done = journal(conn, name, run.run_id)
    assert done[("invalid_index", "maint.events_k_ccnew")] == "drop_index"
    assert done[("vacuum", "maint.events")] == "vacuum"
    assert done[("reindex", "maint.events_k")] == "reindex"
    assert done[("reindex", "maint.events_pkey")] == "reindex"
    assert done[("vacuum_full", "maint.small")] == "vacuum_full"
    assert done[("unused_index", "maint.events_payload_unused")] == "report"
    summary = task_result(run, "report")
    assert summary["failed"] == [] and summary["phases_not_completed"] == []
    assert "maint.events_payload_unused" in summary["unused_indexes"]
    assert task_result(run, "drop_invalid_indexes")["retry"][0]["index"] == "events_k"

    rerun = run_dag(dag, maint_conf())  # converges: nothing is due any more
    assert rerun.state == "success", task_states(rerun)
    assert {a for (k, _), a in journal(conn, name, rerun.run_id).items() if k in ("vacuum", "reindex")} == set()


def test_maintenance_dry_run_touches_nothing(dagbag, target):
    conn, name, configure, _ = target
    bloat(conn, name)
    configure(maintenance={"schemas": ["maint"], "reindex_min_bytes": 0})
    run = run_dag(dagbag.get_dag("dbops_pg_maintenance"), maint_conf(dry_run=True, vacuum_full_tables=["maint.small"]))
    assert run.state == "success", task_states(run)
    assert journal(conn, name, run.run_id) == {}
    planned = task_result(run, "vacuum_analyze")["entries"]
    assert [(e["target"], e["action"]) for e in planned] == [("maint.events", "planned")]
    with pg_connect(conn, name) as c:
        invalid = c.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()[0]
    assert invalid == 1


def test_vacuum_full_waits_for_an_approval_and_a_rejection_rewrites_nothing(dagbag, target):
    conn, name, configure, _ = target
    bloat(conn, name)
    configure(maintenance={"schemas": ["maint"], "reindex_min_bytes": 0})

    def relfilenode() -> int:  # VACUUM FULL writes the table into a new file
        with pg_connect(conn, name) as c:
            return c.execute("SELECT pg_relation_filenode('maint.small')").fetchone()[0]

    before = relfilenode()
    run = run_dag(
        dagbag.get_dag("dbops_pg_maintenance"), maint_conf(vacuum_full_tables=["maint.small"]), respond="Reject"
    )
    states = task_states(run)
    assert run.state == "success", states  # the other phases ran; the rejection is no failure
    assert states["approve_vacuum_full"] == "success" and states["vacuum_full"] == "skipped", states
    assert relfilenode() == before
    assert ("vacuum_full", "maint.small") not in journal(conn, name, run.run_id)
    assert task_result(run, "report")["phases_not_completed"] == []
    assert task_result(run, "approve_vacuum_full", key="approval")["approved"] is False
    [asked] = run.approvals
    assert (
        "maint.small" in asked["subject"] and "`maint.small`" in asked["body"] and "ACCESS EXCLUSIVE" in asked["body"]
    )

    approved = run_dag(
        dagbag.get_dag("dbops_pg_maintenance"), maint_conf(vacuum_full_tables=["maint.small"]), respond="Approve"
    )
    assert approved.state == "success", task_states(approved)
    assert relfilenode() != before


def _refused_in_plan(run, conn, name) -> None:
    states = task_states(run)
    assert run.state == "failed" and states["plan"] == "failed", states
    assert {states[t] for t in ("drop_invalid_indexes", "vacuum_analyze", "reindex", "vacuum_full")} == {
        "upstream_failed"
    }
    assert journal(conn, name, run.run_id) == {}  # nothing done, nothing recorded


def test_maintenance_refuses_a_listed_table_that_does_not_exist_in_plan(dagbag, target):
    conn, name, configure, _ = target
    run = run_dag(dagbag.get_dag("dbops_pg_maintenance"), maint_conf(vacuum_full_tables=["auth.no_such_table"]))
    _refused_in_plan(run, conn, name)


@pytest.mark.parametrize(
    "params, config, named",
    [
        (
            {"vacuum_full_tables": ["maint.small", "maint.nope"]},
            {},
            "vacuum_full_tables: table maint.nope does not exist",
        ),
        ({"reindex_schemas": ["no_such_schema"]}, {}, "reindex_schemas: schema no_such_schema does not exist"),
        ({}, {"schemas": ["maint", "nope"]}, "maintenance.schemas: schema nope does not exist"),
        ({"vacuum_full_tables": ["pg_catalog.pg_class"]}, {}, "pg_catalog.pg_class is in the system schema pg_catalog"),
        ({"reindex_schemas": ["pg_toast"]}, {}, "reindex_schemas: pg_toast is a system schema"),
        ({"reindex_schemas": ["information_schema"]}, {}, "reindex_schemas: information_schema is a system schema"),
        ({"reindex_schemas": ["pg_temp_3"]}, {}, "reindex_schemas: pg_temp_3 is a system schema"),
        (
            {"vacuum_full_tables": ["pg_toast_temp_1.t"]},
            {},
            "pg_toast_temp_1.t is in the system schema pg_toast_temp_1",
        ),
        ({}, {"schemas": ["maint", "pg_catalog"]}, "maintenance.schemas: pg_catalog is a system schema"),
    ],
)
def test_maintenance_names_are_checked_in_plan(dagbag, target, capfd, params, config, named):
    conn, name, configure, _ = target
    with pg_connect(conn, name, autocommit=True) as c:
        c.execute("CREATE SCHEMA maint")
        c.execute("CREATE TABLE maint.small (id int PRIMARY KEY)")
    configure(maintenance=config)
    capfd.readouterr()
    run = run_dag(dagbag.get_dag("dbops_pg_maintenance"), maint_conf(**params))
    _refused_in_plan(run, conn, name)
    out, err = capfd.readouterr()
    assert named in out + err and "refused before any work" in out + err  # the plan task's error names it


def test_bad_params_are_refused_before_any_work(dagbag, target):
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError):
        run_dag(dagbag.get_dag("dbops_pg_maintenance"), maint_conf(vacuum_full_tables=["no_schema"]))


def test_monitor_records_sizes_and_writes_report_and_metrics(dagbag, target):
    conn, name, _, reports = target
    dag = dagbag.get_dag("dbops_table_size_monitor")
    run = run_dag(dag)
    assert run.state == "success", task_states(run)
    captured = task_result(run, "capture_sizes")
    assert captured["tables"] >= 14 and captured["database"] == name
    report = task_result(run, "size_report")
    assert report["alerts"] == []
    assert (reports / "metrics" / "dbops_table_sizes.prom").read_text().count("dbops_table_total_bytes{") == captured[
        "tables"
    ]
    text = open(report["report_file"]).read()
    assert "data_platform.text_embeddings" in text and "alerts: none" in text
    with pg_connect(conn, name) as c:
        assert c.execute("SELECT count(DISTINCT captured_at) FROM dbops.table_size_history").fetchone()[0] == 1


def test_monitor_alert_fails_the_check_naming_table_and_threshold_and_notifies(dagbag, target, alerts):
    conn, name, configure, _ = target
    configure(monitor={"size_limits": {"auth.users": 1}})
    run = run_dag(dagbag.get_dag("dbops_table_size_monitor"))
    states = task_states(run)
    assert run.state == "failed" and states["check_thresholds"] == "failed", states
    assert states["size_report"] == "success"
    messages = [a["message"] for a in task_result(run, "size_report")["alerts"]]
    assert len(messages) == 1 and "auth.users" in messages[0] and "monitor.size_limits['auth.users'] = 1" in messages[0]
    deadline = time.monotonic() + 5
    while not alerts and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alerts and alerts[0]["task_id"] == "check_thresholds" and "auth.users" in alerts[0]["message"]


def test_monitor_backfill_of_a_past_date_measures_nothing(dagbag, target):
    conn, name, _, reports = target
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    run = run_dag(dagbag.get_dag("dbops_table_size_monitor"), logical_date=past)
    assert run.state == "success"
    states = task_states(run)
    assert states.pop("summary") == "success" and set(states.values()) == {"skipped"}, states
    assert "capture_sizes: skipped: " in task_result(run, "summary")
    with pg_connect(conn, name) as c:
        assert c.execute("SELECT count(*) FROM dbops.table_size_history").fetchone()[0] == 0
    assert not reports.exists()


def test_health_checks_green_on_the_local_stores(dagbag, target, devstack):
    from dbops.sqlfiles import load_spec
    from dbops.stores.kafka import bootstrap as kafka

    admin = kafka_admin(devstack.conn("dbops_kafka"))  # topics as dbops_bootstrap makes them
    kafka.bootstrap(admin, load_spec("kafka_topics.json"), replication_factor=1, timeout=30)
    run = run_dag(dagbag.get_dag("dbops_health"), HEALTH)
    states = task_states(run)
    assert run.state == "success", states
    assert states == {
        "check_postgres": "success",
        "check_redis": "success",
        "check_mongo": "success",
        "check_kafka": "success",
        "summary": "success",
    }  # the local Mongo is a one-member replica set
    assert task_result(run, "check_redis")["measured"]["maxmemory"] > 0
    assert task_result(run, "check_mongo")["measured"]["set"] == "secantus"
    assert task_result(run, "check_kafka")["measured"]["partitions"] == {
        "data-ingestion": 3,
        "model-events": 3,
        "system-logs": 3,
    }


def test_health_check_over_threshold_fails_loudly(dagbag, target, alerts):
    _, _, configure, _ = target
    configure(health={"pg_max_connections": 1})
    with pg_connect(target[0], target[1]), pg_connect(target[0], target[1]):  # two more clients
        run = run_dag(dagbag.get_dag("dbops_health"), {"stores": ["postgres"]})
    states = task_states(run)
    assert run.state == "failed" and states["check_postgres"] == "failed", states
    deadline = time.monotonic() + 5
    while not alerts and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alerts and "exceed health.pg_max_connections = 1" in alerts[0]["message"]


def test_several_databases_a_listed_table_must_exist_in_one_of_them(dagbag, target):
    conn, name, configure, _ = target
    bloat(conn, name)
    # the server's own "postgres" database has no schema maint: nothing to do there
    configure(maintenance={"databases": [name, "postgres"], "schemas": ["maint"], "reindex_min_bytes": 0})
    dag = dagbag.get_dag("dbops_pg_maintenance")
    run = run_dag(dag, maint_conf(vacuum_full_tables=["maint.small"]), respond="Approve")
    assert run.state == "success", task_states(run)
    done = journal(conn, name, run.run_id)
    assert done[("vacuum_full", "maint.small")] == "vacuum_full"  # the journal's own database: no prefix
    assert done[("vacuum_full", "postgres:maint.small")] == "skipped"  # another database: prefixed

    run = run_dag(dag, maint_conf(vacuum_full_tables=["maint.nowhere"]))
    _refused_in_plan(run, conn, name)


def test_an_unknown_database_is_refused_before_any_work(dagbag, target):
    conn, name, configure, _ = target
    configure(maintenance={"databases": ["no_such_database"]})
    run = run_dag(dagbag.get_dag("dbops_pg_maintenance"), maint_conf())
    states = task_states(run)
    assert run.state == "failed" and states["plan"] == "failed", states
    assert {states[t] for t in ("drop_invalid_indexes", "vacuum_analyze", "reindex", "vacuum_full")} == {
        "upstream_failed"
    }
    assert states["report"] == "failed"  # it runs anyway (all_done) and says why there is no report
    assert journal(conn, name, run.run_id) == {}
