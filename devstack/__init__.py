"""Local, real store servers for developing and testing dbops (never used in production).

    python -m devstack up [SERVICE...]     install what is missing, start, wait until ready
    python -m devstack down [SERVICE...]   stop what this stack started (by PID file)
    python -m devstack status              one line per service
    python -m devstack env                 write the Airflow environment file and print its path

Stores (the default set): postgres, walreceiver (WAL streaming from it), redis, mongo, kafka, s3,
offsite (sshd + rsync target).
``airflow`` (standalone, with the dbops DAGs and the stores' connections) is started by name;
on a fresh metadata database it runs the first start (bootstrap, first backups, then unpause).
Weaviate cannot be run here; no ``dbops_weaviate`` connection is generated.
"""

from __future__ import annotations

import importlib

from devstack.core import Service

SERVICES = {
    "postgres": "devstack.services.postgres:Postgres",
    # pg_receivewal into the backup repository (point-in-time recovery); needs postgres
    "walreceiver": "devstack.services.walreceiver:WalReceiver",
    "redis": "devstack.services.redis:Redis",
    "mongo": "devstack.services.mongo:Mongo",
    "kafka": "devstack.services.kafka:Kafka",
    "s3": "devstack.services.s3:S3",
    "offsite": "devstack.services.offsite:OffsiteSSH",
    "airflow": "devstack.services.airflow:main_instance",
}
STORES = [name for name in SERVICES if name != "airflow"]


def service(name: str) -> Service:
    try:
        target = SERVICES[name]
    except KeyError:
        raise SystemExit(f"unknown service {name!r}; known: {', '.join(SERVICES)}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)()
