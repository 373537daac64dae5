"""Postgres bootstrap against the real local PostgreSQL 16 + pgvector: migrations
applied in order and recorded, reruns change nothing, history is never rewritten."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dbops.config import PostgresSettings
from dbops.migrations import MigrationError, MigrationRunner, discover
from dbops.report import StoreReport
from dbops.sqlfiles import MIGRATIONS_DIR
from dbops.stores.postgres import bootstrap as postgres
from tests.support import pg_connect

pytestmark = pytest.mark.integration

SETTINGS = PostgresSettings()


def _tables(conn) -> set[str]:
    rows = conn.execute(
        "SELECT schemaname || '.' || tablename FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
    ).fetchall()
    conn.rollback()
    return {r[0] for r in rows}


def test_full_bootstrap_from_empty_then_a_rerun_changes_nothing(scratch_pg):
    conn_info, db = scratch_pg
    with pg_connect(conn_info, db) as conn:
        first = postgres.bootstrap(conn, SETTINGS)
        assert not first.problems, first.render()
        created = [c.target for c in first.modified]
        assert [t for t in created if t.startswith("migration")] == [
            f"migration {m.filename}" for m in discover(MIGRATIONS_DIR)
        ]
        assert any("text_embeddings_embedding_ann" in t for t in created)
        tables = _tables(conn)
        for expected in (
            "auth.users",
            "auth.groups",
            "auth.permissions",
            "data_platform.datasets",
            "data_platform.data_items",
            "data_platform.text_embeddings",
            "data_platform.data_sources",
            "algo_platform.algorithms",
            "model_platform.models",
            "model_platform.model_versions",
            "service_platform.deployed_services",
            "dbops.schema_migrations",
            "dbops.table_size_history",
        ):
            assert expected in tables
        index = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'text_embeddings_embedding_ann'"
        ).fetchone()[0]
        assert "ivfflat" in index and "lists='100'" in index.replace(" ", "")
        conn.rollback()

        second = postgres.bootstrap(conn, SETTINGS)
        assert second.modified == [], second.render()
        assert not postgres.verify(conn, SETTINGS).problems


def test_vector_column_takes_1536_dimensions_and_ann_query_works(scratch_pg):
    conn_info, db = scratch_pg
    with pg_connect(conn_info, db) as conn:
        postgres.bootstrap(conn, SETTINGS)
        dim = conn.execute(
            "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'data_platform.text_embeddings'::regclass "
            "AND attname = 'embedding'"
        ).fetchone()[0]
        assert dim == 1536


def test_dry_run_plans_everything_and_touches_nothing(scratch_pg):
    conn_info, db = scratch_pg
    with pg_connect(conn_info, db) as conn:
        before = _tables(conn)
        plan = postgres.bootstrap(conn, SETTINGS, dry_run=True)
        assert len(plan.modified) == len(discover(MIGRATIONS_DIR)) + 1
        assert all(c.detail.startswith("would") for c in plan.modified)
        assert _tables(conn) == before


def test_verify_names_a_dropped_index(scratch_pg):
    conn_info, db = scratch_pg
    with pg_connect(conn_info, db) as conn:
        postgres.bootstrap(conn, SETTINGS)
        victim = sorted(postgres.declared_objects(discover(MIGRATIONS_DIR))["index"])[0]
        conn.execute(f"DROP INDEX {victim}")
        conn.commit()
        problems = postgres.verify(conn, SETTINGS).problems
        assert [c.target for c in problems] == [f"index {victim}"]


def _copy_migrations(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    return folder


def test_a_changed_applied_migration_is_refused_by_name(scratch_pg, tmp_path):
    conn_info, db = scratch_pg
    folder = _copy_migrations(tmp_path)
    with pg_connect(conn_info, db) as conn:
        MigrationRunner(conn, discover(folder)).run(StoreReport("postgres"))
        changed = sorted(folder.glob("V002__*.sql"))[0]
        changed.write_text(changed.read_text() + "\n-- an innocent-looking edit\n")
        with pytest.raises(MigrationError, match=changed.name):
            MigrationRunner(conn, discover(folder)).run(StoreReport("postgres"))


def test_a_failed_migration_leaves_the_database_as_it_was(scratch_pg, tmp_path):
    conn_info, db = scratch_pg
    folder = _copy_migrations(tmp_path)
    (folder / "V900__broken.sql").write_text(
        "CREATE TABLE dbops.half_done (id int);\nINSERT INTO dbops.half_done VALUES (1);\nSELECT 1/0;\n"
    )
    with pg_connect(conn_info, db) as conn:
        with pytest.raises(Exception, match="division by zero"):
            MigrationRunner(conn, discover(folder)).run(StoreReport("postgres"))
        conn.rollback()
        assert conn.execute("SELECT to_regclass('dbops.half_done')").fetchone()[0] is None
        versions = [r[0] for r in conn.execute("SELECT version FROM dbops.schema_migrations").fetchall()]
        assert 900 not in versions and len(versions) == len(discover(MIGRATIONS_DIR))
        conn.rollback()
        # the earlier migrations stay applied; fixing the file lets a rerun finish
        (folder / "V900__broken.sql").write_text("CREATE TABLE dbops.half_done (id int);\n")
        report = StoreReport("postgres")
        MigrationRunner(conn, discover(folder)).run(report)
        assert [c.target for c in report.modified] == ["migration V900__broken.sql"]


def test_a_migration_numbered_below_the_newest_applied_is_refused(scratch_pg, tmp_path):
    conn_info, db = scratch_pg
    folder = _copy_migrations(tmp_path)
    late = sorted(folder.glob("V004__*.sql"))[0]
    held_back = late.read_text()
    late.unlink()
    with pg_connect(conn_info, db) as conn:
        MigrationRunner(conn, discover(folder)).run(StoreReport("postgres"))
        late.write_text(held_back)
        with pytest.raises(MigrationError, match=f"{late.name}.*below the newest applied"):
            MigrationRunner(conn, discover(folder)).run(StoreReport("postgres"))


def test_badly_named_and_duplicate_files_are_refused(tmp_path):
    folder = _copy_migrations(tmp_path)
    (folder / "V2_5__late.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="V2_5__late.sql.*not named"):
        discover(folder)
    (folder / "V2_5__late.sql").rename(folder / "V003__again.sql")
    with pytest.raises(MigrationError, match="share version 3"):
        discover(folder)


def test_initial_admin_is_created_once_with_a_django_hash(scratch_pg):
    conn_info, db = scratch_pg
    with pg_connect(conn_info, db) as conn:
        postgres.bootstrap(conn, SETTINGS)
        report = StoreReport("postgres")
        postgres.ensure_initial_admin(conn, "admin", "admin@example.org", "s3cret-Pässword", report, dry_run=False)
        stored = conn.execute("SELECT password_hash, is_superuser FROM auth.users WHERE username = 'admin'").fetchone()
        conn.rollback()
        algorithm, iterations, salt, digest = stored[0].split("$")
        assert algorithm == "pbkdf2_sha256" and stored[1] is True
        assert "s3cret" not in stored[0]
        assert postgres.django_password_hash("s3cret-Pässword", salt=salt, iterations=int(iterations)) == stored[0]
        # a rerun (even with another password in the connection) leaves the account alone
        again = StoreReport("postgres")
        postgres.ensure_initial_admin(conn, "admin", "admin@example.org", "other", again, dry_run=False)
        assert [c.action for c in again.changes] == ["unchanged"]
        assert conn.execute("SELECT password_hash FROM auth.users WHERE username = 'admin'").fetchone()[0] == stored[0]
        conn.rollback()
