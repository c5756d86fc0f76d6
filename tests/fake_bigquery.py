"""A loopback HTTP server answering the BigQuery v2 REST calls of a query, by running the SQL in DuckDB.

The real google-cloud-bigquery client is pointed at it (client_options
api_endpoint), so tests see the exact job request fleetops sends and get real
rows back. Table names `project.dataset.table` map to DuckDB `dataset.table`.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import duckdb
import pandas as pd

from tests.loopback import LoopbackJsonServer

_TYPES = {"int": "INTEGER", "float": "FLOAT", "double": "FLOAT", "bool": "BOOLEAN", "str": "STRING", "object": "STRING"}


class FakeBigQuery(LoopbackJsonServer):
    def __init__(self, tables: dict[str, pd.DataFrame]):
        super().__init__()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.conn = duckdb.connect()
        for name, frame in tables.items():
            _, dataset, table = name.split(".")
            self.conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{dataset}"')
            self.conn.register("frame", frame)
            self.conn.execute(f'CREATE TABLE "{dataset}"."{table}" AS SELECT * FROM frame')
            self.conn.unregister("frame")
        self._lock = threading.Lock()

    def handle(self, method: str, path: str, query: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if match := re.match(r"^/bigquery/v2/projects/([^/]+)/jobs$", path):
            return self._insert(match.group(1), body)
        if match := re.match(r"^/bigquery/v2/projects/([^/]+)/queries/([^/]+)$", path):
            return 200, self._results(match.group(2))
        if match := re.match(r"^/bigquery/v2/projects/([^/]+)/jobs/([^/]+)$", path):
            return 200, self.jobs[match.group(2)]["resource"]
        return 404, {"error": {"code": 404, "message": f"unsupported {method} {path}", "status": "NOT_FOUND"}}

    def _insert(self, project: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        job_id = body.get("jobReference", {}).get("jobId") or f"job_{len(self.jobs) + 1}"
        sql = body["configuration"]["query"]["query"]
        duck_sql = re.sub(r"`[^`.]+\.([^`.]+)\.([^`.]+)`", r'"\1"."\2"', sql)
        try:
            with self._lock:
                frame = self.conn.execute(duck_sql).df()
        except duckdb.Error as exc:
            return 400, {"error": {"code": 400, "message": str(exc), "status": "INVALID_ARGUMENT"}}
        reference = {"projectId": project, "jobId": job_id, "location": "US"}
        resource = {
            "jobReference": reference,
            "configuration": body["configuration"],
            "status": {"state": "DONE"},
            "statistics": {"query": {"totalBytesProcessed": "0"}},
        }
        self.jobs[job_id] = {"resource": resource, "frame": frame}
        return 200, resource

    def _results(self, job_id: str) -> dict[str, Any]:
        job = self.jobs[job_id]
        frame: pd.DataFrame = job["frame"]
        fields = [{"name": c, "type": _TYPES.get(_kind(frame[c]), "STRING"), "mode": "NULLABLE"} for c in frame.columns]
        rows = [{"f": [{"v": _cell(v)} for v in row]} for row in frame.itertuples(index=False)]
        return {
            "kind": "bigquery#getQueryResultsResponse",
            "jobReference": job["resource"]["jobReference"],
            "schema": {"fields": fields},
            "rows": rows,
            "totalRows": str(len(rows)),
            "jobComplete": True,
        }


def _kind(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    return "str"


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return str(value)
