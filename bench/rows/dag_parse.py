"""DAG parse time of all dbops DAG files beyond ``import airflow`` (bench/dag_parse.py)."""

from __future__ import annotations

from bench.dag_parse import REPO, measure_once
from bench.rows import Context, row

TARGET_S = 0.3


def run(ctx: Context) -> list[dict]:
    files = sorted(p for p in (REPO / "dags").glob("*.py") if not p.name.startswith("_"))
    totals = [sum(measure_once(files).values()) for _ in range(max(ctx.repetitions, 3))]
    from statistics import median

    return [
        row(
            "dag_parse",
            what=f"DAG parse ({len(files)} files)",
            old_way="-",
            dbops_way="all dbops DAG files, beyond `import airflow` (a fresh interpreter per run)",
            metric="seconds, all files together",
            old=None,
            dbops=totals,
            target=f"under {TARGET_S} s in total",
            ratio=median(totals) / TARGET_S,
            met=median(totals) < TARGET_S,
            details={"ratio_means": "median / target"},
        )
    ]
