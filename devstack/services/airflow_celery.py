"""Airflow as the docker-compose deployment runs it, without Docker: CeleryExecutor.

Four processes instead of ``airflow standalone``: ``api-server``, ``scheduler``,
``dag-processor`` and a ``celery worker``. The metadata database is a database of the
local PostgreSQL (``airflow_<name>``, as for ``Airflow``), the Celery broker a Redis
instance of its own (a broker must not live in the allkeys-lru cache Redis: eviction
would drop queued tasks), the Celery result backend the same PostgreSQL database. Secrets reach the processes only
through their environment.
"""

from __future__ import annotations

import subprocess
from urllib.parse import quote

from devstack.core import VENV_BIN, DevstackError, Process, wait_until
from devstack.services.airflow import POOLS_FILE, Airflow
from devstack.services.redis import Redis

# component -> (airflow arguments, a string its /proc/PID/cmdline keeps after it sets its title)
COMPONENTS = {
    "api-server": (["api-server"], "airflow api"),
    "scheduler": (["scheduler"], "airflow scheduler"),
    "dag-processor": (["dag-processor"], "airflow dag-processor"),
    "celery-worker": (
        ["celery", "worker", "--concurrency", "2", "--without-mingle", "--without-gossip"],
        "celery worker",
    ),
}


class AirflowCelery(Airflow):
    """A CeleryExecutor Airflow on ``port`` with its broker Redis on ``broker_port``."""

    def __init__(
        self,
        name: str = "airflow-celery",
        port: int = 58085,
        broker_port: int = 56385,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name=name, port=port, extra_env=extra_env)
        self.broker = Redis(name=f"{name}-broker", port=broker_port)
        self.processes = {
            component: Process(self.dir, component, marker=marker) for component, (_, marker) in COMPONENTS.items()
        }

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CELERY__BROKER_URL": (
                    f"redis://:{quote(self.broker.password, safe='')}@127.0.0.1:{self.broker.port}/0"
                ),
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.database_url(),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            }
        )
        env.update(self.extra_env)
        return env

    def running(self) -> bool:
        return all(process.running() for process in self.processes.values())

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.broker.up()
        self.create_database()
        env = self.env()
        airflow = str(VENV_BIN / "airflow")
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
        for component, (argv, _) in COMPONENTS.items():
            if not self.processes[component].running():
                self.processes[component].spawn([airflow, *argv], env=env, cwd=self.dir)
        wait_until(self.ready, timeout=180, what="Airflow API server (CeleryExecutor)")
        subprocess.run([airflow, "pools", "import", str(POOLS_FILE)], env=env, check=True, stdout=subprocess.DEVNULL)
        dead = [component for component, process in self.processes.items() if not process.running()]
        if dead:
            logs = ", ".join(str(self.processes[component].logfile) for component in dead)
            raise DevstackError(f"{self.name}: {', '.join(dead)} exited after start (see {logs})")

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop(timeout=60)
        self.broker.stop()
