"""The benchmark and the DAG-parse probe run in subprocesses that inherit this environment:
the local stack's connections and settings (DBOPS_*) go in first."""

from __future__ import annotations

import tests.stack_env  # noqa: F401
