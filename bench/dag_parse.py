"""How long the dbops DAG files take to parse, beyond ``import airflow``.

    .venv/bin/python bench/dag_parse.py [--runs 5] [--json bench/results/dag_parse.json]

Each run is a fresh interpreter (as the dag-processor's parsing is): it imports
airflow first, then times executing every file of dags/. Prints the median, min and
max of the per-run totals. A recorded measurement, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import importlib.util, json, sys, time
import airflow  # not counted
sys.path.insert(0, sys.argv[2])
timings = {}
for path in sys.argv[3:]:
    started = time.perf_counter()
    spec = importlib.util.spec_from_file_location("dag_" + str(abs(hash(path))), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    timings[path.rsplit("/", 1)[-1]] = time.perf_counter() - started
print(json.dumps(timings))
"""


def measure_once(files: list[Path]) -> dict[str, float]:
    env = dict(os.environ, AIRFLOW_HOME=tempfile.mkdtemp(prefix="dbops-bench-"))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "x", str(REPO / "plugins"), *map(str, files)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    files = sorted(p for p in (REPO / "dags").glob("*.py") if not p.name.startswith("_"))
    runs = [measure_once(files) for _ in range(args.runs)]
    totals = [sum(r.values()) for r in runs]
    result = {
        "what": "parse time of all dbops DAG files beyond `import airflow` (seconds)",
        "files": [f.name for f in files],
        "runs": args.runs,
        "median_s": statistics.median(totals),
        "min_s": min(totals),
        "max_s": max(totals),
        "per_file_median_s": {f.name: statistics.median(r[f.name] for r in runs) for f in files},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
