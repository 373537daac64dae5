"""Plain-text tables and human sizes for task logs and report files."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def size(value: int | float | None) -> str:
    """Bytes as PostgreSQL's pg_size_pretty writes them (1024-based, kB/MB/GB)."""
    if value is None:
        return "-"
    number = float(value)
    sign = "-" if number < 0 else ""
    number = abs(number)
    for unit in _UNITS:
        if number < 1024 or unit == _UNITS[-1]:
            return f"{sign}{number:.0f} {unit}" if unit == "B" else f"{sign}{number:.1f} {unit}"
        number /= 1024
    raise AssertionError("unreachable")


def duration_ms(value: int | float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f} s" if value >= 1000 else f"{value:.0f} ms"


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str = "(none)") -> str:
    """A fixed-width text table; numbers are right-aligned."""
    body = [[cell(v) for v in row] for row in rows]
    if not body:
        return empty
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    numeric = [all(_looks_numeric(r[i]) for r in body if r[i] != "-") for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(list(headers)), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in body]
    return "\n".join(out)


def _looks_numeric(text: str) -> bool:
    head = text.split(" ", 1)[0].lstrip("-+")
    return bool(head) and head.replace(".", "", 1).isdigit()
