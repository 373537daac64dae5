"""Parsing the DAG files stays cheap: no provider's asset URI handlers (and with them
boto3 and the amazon hooks) are loaded just to define the backup Assets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = r"""
import glob, importlib.util, json, sys
import airflow
sys.path.insert(0, sys.argv[1])
before = set(sys.modules)
for path in sorted(glob.glob(sys.argv[2] + "/*.py")):
    spec = importlib.util.spec_from_file_location("dag_" + str(abs(hash(path))), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
from dbops.dagkit import BACKUP_ASSETS
print(json.dumps({"loaded": sorted(set(sys.modules) - before), "uris": {k: a.uri for k, a in BACKUP_ASSETS.items()}}))
"""


def test_parsing_the_dags_loads_no_provider_asset_handlers(tmp_path):
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO / "plugins"), str(REPO / "dags")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    heavy = [m for m in result["loaded"] if m.startswith(("boto3", "botocore", "airflow.providers.amazon"))]
    assert heavy == []
    assert result["uris"]["postgres"] == "x-dbops://backups/postgres"
    assert len(set(result["uris"].values())) == len(result["uris"])
