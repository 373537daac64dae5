"""The local stack's environment, for the test folders that parse DAGs, run Airflow or talk
to the stores (dags, integration, e2e, reliability, bench): their conftest imports this module
before anything of dbops, so its effect is in place before any DAG file is parsed.

Importing it sets the ``AIRFLOW_CONN_*`` and ``DBOPS_*`` settings of ``python -m devstack``
(DAG files read ``DBOPS_*`` at parse time, as the dag-processor does) and puts the devstack's
tool folder first on PATH. It reads (and on first use creates) the devstack's state: the pure
tests of ``tests/unit`` never import it, so they run on a fresh clone with no server.
"""

from __future__ import annotations

import os

from devstack.__main__ import stack_environment
from devstack.core import state_dir

os.environ["PATH"] = f"{state_dir() / 'bin'}:{os.environ['PATH']}"
os.environ.update(stack_environment())
