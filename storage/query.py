"""Read-only queries over the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from storage.db import open_db
from storage.db import rows as _rows


def query(db_path: str | Path, sql: str, params: Sequence[Any] = ()) -> list[dict]:
    """Run a read-only query (a read-only connection: writes fail)."""
    with open_db(db_path, read_only=True) as con:
        return _rows(con, sql, params)
