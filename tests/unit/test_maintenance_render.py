"""Text tables and sizes for logs and report files."""

from __future__ import annotations

from dbops.maintenance import render


def test_sizes_read_like_pg_size_pretty():
    assert render.size(None) == "-"
    assert render.size(512) == "512 B"
    assert render.size(8192) == "8.0 kB"
    assert render.size(3 * 1024**3) == "3.0 GB"
    assert render.size(-2048) == "-2.0 kB"


def test_table_aligns_columns_and_numbers_right():
    text = render.table(("name", "size"), [("a", "8.0 kB"), ("longer", "512 B")])
    lines = text.splitlines()
    assert lines[0] == "name      size"  # a numeric column is right-aligned, its header too
    assert lines[2] == "a       8.0 kB"
    assert lines[3] == "longer   512 B"
    assert render.table(("x",), [], empty="(nothing)") == "(nothing)"
