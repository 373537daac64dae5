"""One module per pair of the issue's table. Each ``run(ctx)`` returns one or more row
dicts built by :func:`row`; a crash fails the benchmark (no number is made up)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.env import Bench
from bench.measure import summary


@dataclass
class Context:
    bench: Bench
    repetitions: int
    pg_gb: float  # the main Postgres dataset
    memory_gb: tuple[float, float]  # the two sizes of the memory row
    redis_mb: int
    smoke: bool
    shared: dict = field(default_factory=dict)  # artifacts reused between rows (stated in details)

    @property
    def work(self) -> Path:
        return self.bench.work

    def log(self, message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    def python(self) -> str:
        return sys.executable


def row(
    row_id: str,
    *,
    what: str,
    old_way: str,
    dbops_way: str,
    metric: str,
    old: list[float] | None,
    dbops: list[float],
    target: str,
    ratio: float,
    met: bool,
    also: dict[str, float] | None = None,
    details: dict | None = None,
) -> dict:
    """One row of the table. ``also``: the other ratios a two-condition target checks (named,
    shown beside ``ratio``); ``met`` must require them too."""
    return {
        "id": row_id,
        "what": what,
        "old_way": old_way,
        "dbops_way": dbops_way,
        "metric": metric,
        "old": summary(old) if old else None,
        "dbops": summary(dbops),
        "ratio": ratio,
        "also": also or {},
        "target": target,
        "met": bool(met),
        "details": details or {},
    }


def ratio_of(new: list[float], old: list[float]) -> float:
    from statistics import median

    base = median(old)
    return median(new) / base if base else float("inf")


Runner = Callable[[Context], list[dict]]
