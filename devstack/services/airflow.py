"""Airflow itself (``airflow standalone``) with the dbops DAGs, against the local stores.

The metadata database is a database of the local PostgreSQL (``airflow_<name>``), as in
production: with SQLite, a CLI command such as ``airflow backfill create`` fails with
"database is locked" while the scheduler writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from urllib.parse import quote

from devstack.core import REPO, VENV_BIN, Process, Service, secret, state_dir, wait_until, write_private

POOLS_FILE = REPO / "include" / "airflow" / "pools.json"


class Airflow(Service):
    name = "airflow"
    port = 58080

    def __init__(self, name: str = "airflow", port: int = 58080, extra_env: dict[str, str] | None = None) -> None:
        """A second instance (own name, home, port) serves end-to-end tests beside ``make run``."""
        self.name, self.port = name, port
        self.extra_env = extra_env or {}
        super().__init__()
        self.process = Process(self.dir, "standalone", marker="airflow standalone")
        self.home = self.dir / "home"
        self.database = "airflow_" + name.replace("-", "_")

    def env(self) -> dict[str, str]:
        """The environment of every Airflow process: connections, dbops config, settings."""
        from devstack.__main__ import stack_environment

        passwords = write_private(
            self.dir / "passwords.json", json.dumps({"admin": secret("airflow_admin")})
        )
        env = dict(os.environ)
        env.update(stack_environment())
        env.update(
            {
                "PATH": f"{state_dir() / 'bin'}:{VENV_BIN}:{env.get('PATH', '')}",
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.port}",
                "AIRFLOW__API_AUTH__JWT_SECRET": secret("airflow_jwt") * 3,
                "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url(),
            }
        )
        env.update(self.extra_env)
        return env

    def running(self) -> bool:
        return self.process.running()

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.port}/api/v2/monitor/health"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def database_url(self) -> str:
        login = _postgres_login()
        return (
            f"postgresql+psycopg2://{quote(login['login'], safe='')}:{quote(login['password'], safe='')}"
            f"@{login['host']}:{login['port']}/{self.database}"
        )

    def create_database(self) -> None:
        with _postgres_admin() as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone():
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def drop_database(self) -> None:
        """Forget every run, connection and setting of this instance (tests start fresh)."""
        with _postgres_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.create_database()
        env = self.env()
        self.process.spawn([str(VENV_BIN / "airflow"), "standalone"], env=env, cwd=self.dir)
        wait_until(self.ready, timeout=180, what="Airflow API server")
        subprocess.run(
            [str(VENV_BIN / "airflow"), "pools", "import", str(POOLS_FILE)],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self.process.stop(timeout=60)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _postgres_login() -> dict:
    from devstack.services.postgres import Postgres

    return Postgres().connections()["dbops_postgres"]


def _postgres_admin():
    import psycopg

    login = _postgres_login()
    return psycopg.connect(
        host=login["host"], port=login["port"], user=login["login"], password=login["password"],
        dbname="postgres", autocommit=True,
    )


def _fernet_key() -> str:
    import base64

    raw = secret("airflow_fernet")
    return base64.urlsafe_b64encode(raw.encode()[:32].ljust(32, b"0")).decode()
