"""Where the package's SQL, JS and spec files live (``include/``), and reading them."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

# plugins/dbops/sqlfiles.py -> the project root holds include/ (as in the Airflow image)
INCLUDE_DIR = Path(os.environ.get("DBOPS_INCLUDE_DIR", Path(__file__).resolve().parents[2] / "include"))
SQL_DIR = INCLUDE_DIR / "sql"
SCRIPTS_DIR = INCLUDE_DIR / "scripts"
MIGRATIONS_DIR = SQL_DIR / "migrations"


@cache
def load_sql(relative: str) -> str:
    """The text of ``include/sql/<relative>``."""
    return (SQL_DIR / relative).read_text(encoding="utf-8")


@cache
def load_spec(name: str) -> Any:
    """A JSON spec file of ``include/scripts/``."""
    return json.loads((SCRIPTS_DIR / name).read_text(encoding="utf-8"))
