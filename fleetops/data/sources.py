"""Data references: a file (CSV/Parquet), a SQL query, or a `bq://project.dataset.table`.

Which engine runs SQL and tables is the platform's business (DuckDB in the
local twin, BigQuery on Vertex); this module only classifies a reference and
reads files, which both platforms do the same way.

CSV files are parsed by pyarrow, not pandas: pandas' fast parser fails the whole
file on a line with too many fields and quietly pads one with too few with
nulls, while pyarrow hands over every line that does not match the header
(with its text) and parses in parallel. A malformed line fails the read with
its line number, or, for batch prediction, is set aside so the rest is scored.
The columns come out typed and named as `pandas.read_csv` did it (its
missing-value markers, dates left as text, an empty column as float, "Unnamed: 0"
and "a.1" in the header), so training data reads as it did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pa_csv

from fleetops.errors import UserError

_SQL_START = re.compile(r"^\s*(select|with)\b", re.IGNORECASE)
_BQ_TABLE = re.compile(
    r"^bq://(?P<project>[a-z][a-z0-9-]{4,61}[a-z0-9])\.(?P<dataset>\w{1,1024})\.(?P<table>[\w-]{1,1024})$"
)
FILE_SUFFIXES = (".csv", ".parquet", ".pq")
# pandas.read_csv's default missing-value markers.
_MISSING = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A"]
_MISSING += ["NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


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
    match = _BQ_TABLE.fullmatch(source)
    if not match:
        raise UserError(f"table reference {source!r} must look like bq://project.dataset.table")
    return TableRef(**match.groupdict())


@dataclass(frozen=True)
class BadLine:
    """A CSV line that does not split into the header's columns."""

    line: int  # 1-based, as an editor numbers the lines of the file
    text: str
    fields: int
    expected: int

    def describe(self) -> str:
        return f"line {self.line} has {self.fields} field(s), the header has {self.expected}: {self.text!r:.200}"


def read_file(path: str | Path, bad_lines: list[BadLine] | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file into a DataFrame.

    A CSV line with more or fewer fields than the header fails the read with a `UserError` naming
    the file and the line, unless `bad_lines` is given: then such lines are left out and added to it.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file {str(path)!r} does not exist")
    if path.suffix.lower() != ".csv":
        return pd.read_parquet(path)
    frame, found = _read_csv(path)
    if found and bad_lines is None:
        raise UserError(
            f"CSV file {str(path)!r} cannot be parsed: {found[0].describe()} "
            f"({len(found)} malformed line(s) in all; the first is shown)"
        )
    if bad_lines is not None:
        bad_lines.extend(found)
    return frame


def _read_csv(path: Path) -> tuple[pd.DataFrame, list[BadLine]]:
    convert = pa_csv.ConvertOptions(null_values=_MISSING, strings_can_be_null=True)
    try:
        table, malformed = _parse(path, convert)
        temporal = [field.name for field in table.schema if pa.types.is_temporal(field.type)]
        if temporal:  # pandas leaves dates and times as text: read those columns again as such
            convert.column_types = {name: pa.string() for name in temporal}
            table, malformed = _parse(path, convert)
        found = _bad_lines(path, convert) if malformed else []
    except pa.ArrowInvalid as exc:
        raise UserError(f"CSV file {str(path)!r} cannot be read: {exc}") from None
    for i, field in enumerate(table.schema):
        if pa.types.is_null(field.type) and table.num_rows:  # rows but no value: pandas makes it float
            table = table.set_column(i, field.name, pa.nulls(table.num_rows, pa.float64()))
    names = pd.read_csv(path, nrows=0).columns  # "Unnamed: 0", "a.1": pandas' names for the header
    if len(names) == table.num_columns:
        table = table.rename_columns(list(names))
    return table.to_pandas(), found


def _parse(path: Path, convert: pa_csv.ConvertOptions) -> tuple[pa.Table, bool]:
    """The table, and whether malformed lines were left out of it.

    Without a row handler pyarrow parses about twice as fast and stops at the first malformed
    line; only then is the file parsed again, with one.
    """
    try:
        return pa_csv.read_csv(path, convert_options=convert), False
    except pa.ArrowInvalid:
        malformed = []

        def skip(row: pa_csv.InvalidRow) -> str:
            malformed.append(row)
            return "skip"

        table = pa_csv.read_csv(
            path, parse_options=pa_csv.ParseOptions(invalid_row_handler=skip), convert_options=convert
        )
        return table, bool(malformed)


def _bad_lines(path: Path, convert: pa_csv.ConvertOptions) -> list[BadLine]:
    """The malformed lines with their line numbers, which only a serial parse reports.

    pyarrow numbers records, not lines: blank lines count only when they are kept (as empty
    rows, read here and nowhere else), and a quoted value that spans lines adds its newlines.
    """
    rows = []

    def keep(row: pa_csv.InvalidRow) -> str:
        rows.append(row)
        return "skip"

    table = pa_csv.read_csv(
        path,
        read_options=pa_csv.ReadOptions(use_threads=False),
        parse_options=pa_csv.ParseOptions(invalid_row_handler=keep, ignore_empty_lines=False),
        convert_options=convert,
    )
    newlines = np.zeros(table.num_rows + 1, dtype=np.int64)
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            newlines[1:] += pc.count_substring(column, "\n").fill_null(0).to_numpy()
    before = np.cumsum(newlines)  # newlines inside the first i valid rows' values
    found, extra = [], 0
    for k, row in enumerate(rows):  # record 1 is the header; k malformed records came before this one
        line = row.number + int(before[row.number - 2 - k]) + extra
        found.append(BadLine(line, row.text, row.actual_columns, row.expected_columns))
        extra += row.text.count("\n")
    return found
