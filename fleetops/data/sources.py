"""Data references: a file (CSV/Parquet), a SQL query, or a `bq://project.dataset.table`.

Which engine runs SQL and tables is the platform's business (DuckDB in the
local twin, BigQuery on Vertex); this module only classifies a reference and
reads files, which both platforms do the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fleetops.errors import UserError

_SQL_START = re.compile(r"^\s*(select|with)\b", re.IGNORECASE)
_BQ_TABLE = re.compile(
    r"^bq://(?P<project>[a-z][a-z0-9-]{4,61}[a-z0-9])\.(?P<dataset>\w{1,1024})\.(?P<table>[\w-]{1,1024})$"
)
FILE_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class TableRef:
    """A `bq://project.dataset.table` reference."""

    project: str
    dataset: str
    table: str

    @property
    def bigquery_id(self) -> str:
        return f"{self.project}.{self.dataset}.{self.table}"


def source_kind(source: str) -> str:
    """Return 'sql', 'table' or 'file' for a data reference, or raise a `UserError` saying what is allowed."""
    if _SQL_START.match(source):
        return "sql"
    if source.startswith("bq://"):
        parse_table(source)
        return "table"
    if source.lower().endswith(FILE_SUFFIXES):
        return "file"
    raise UserError(
        f"data source {source!r} is not understood: use a .csv or .parquet path, "
        "a SQL query starting with SELECT or WITH, or bq://project.dataset.table"
    )


def parse_table(source: str) -> TableRef:
    match = _BQ_TABLE.match(source)
    if not match:
        raise UserError(f"table reference {source!r} must look like bq://project.dataset.table")
    return TableRef(**match.groupdict())


def read_file(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file into a DataFrame."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file {str(path)!r} does not exist")
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path)
    return pd.read_parquet(path)
