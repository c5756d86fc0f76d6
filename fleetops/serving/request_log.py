"""The request-response log of the local twin: sampled predictions, one row per instance.

The server hands rows to a background thread that batch-inserts them into
`<home>/prediction_log.sqlite` (WAL), so logging never blocks a response.
Model monitoring reads this table as the serving window.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

LOG_FILE = "prediction_log.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS prediction_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    deployed_model_id TEXT NOT NULL,
    model_id TEXT NOT NULL,
    version_id TEXT NOT NULL,
    instance TEXT NOT NULL,
    prediction TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS prediction_log_endpoint_time ON prediction_log (endpoint_id, time);
"""


class RequestLogWriter:
    """Append-only writer with its own thread; `close()` flushes what is queued."""

    def __init__(self, home: str | Path, flush_seconds: float = 0.2):
        self.path = Path(home) / LOG_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(_connect(self.path)) as conn:
            conn.executescript(_SCHEMA)
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._flush_seconds = flush_seconds
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def log(
        self,
        endpoint_id: str,
        deployed: Any,
        instances: list[dict[str, Any]],
        predictions: list[Any],
        at: datetime | None = None,
    ) -> None:
        """Queue one row per instance, stamped now (or `at`, when replaying a log)."""
        now = (at or datetime.now(UTC)).isoformat(timespec="microseconds")
        for instance, prediction in zip(instances, predictions, strict=True):
            self._queue.put(
                (
                    now,
                    endpoint_id,
                    deployed.deployed_model_id,
                    deployed.model_id,
                    deployed.version_id,
                    json.dumps(instance),
                    json.dumps(prediction),
                )
            )

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        conn = _connect(self.path)
        done = False
        while not done:
            rows = []
            deadline = time.monotonic() + self._flush_seconds
            while time.monotonic() < deadline:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    done = True
                    break
                rows.append(item)
            if rows:
                with conn:
                    conn.executemany(
                        "INSERT INTO prediction_log "
                        "(time, endpoint_id, deployed_model_id, model_id, version_id, instance, prediction) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        rows,
                    )
        conn.close()


def read_request_log(home: str | Path, endpoint_id: str | None = None, since: str | None = None) -> pd.DataFrame:
    """Logged rows as a DataFrame: one column per feature, plus time, endpoint, model and prediction."""
    path = Path(home) / LOG_FILE
    columns = ["time", "endpoint_id", "deployed_model_id", "model_id", "version_id", "prediction"]
    if not path.is_file():
        return pd.DataFrame(columns=columns)
    query = (
        "SELECT time, endpoint_id, deployed_model_id, model_id, version_id, instance, prediction FROM prediction_log"
    )
    clauses, args = [], []
    if endpoint_id is not None:
        clauses.append("endpoint_id = ?")
        args.append(endpoint_id)
    if since is not None:
        clauses.append("time >= ?")
        args.append(since)
    if clauses:
        query += " WHERE " + " AND ".join(clauses)
    with closing(_connect(path)) as conn:
        rows = conn.execute(query + " ORDER BY id", args).fetchall()
    if not rows:
        return pd.DataFrame(columns=columns)
    meta = pd.DataFrame([r[:5] for r in rows], columns=columns[:5])
    features = pd.DataFrame([_loads(r[5]) for r in rows])
    meta["prediction"] = [_loads(r[6]) for r in rows]
    return pd.concat([meta, features], axis=1)


def most_requested(home: str | Path, recent_rows: int = 1_000_000) -> list[tuple[str, str, int]]:
    """(endpoint_id, deployed_model_id, rows) in the last `recent_rows` logged rows, most logged first.

    A row is one instance of a logged request, so a model's count is its instances, as
    sampled by its endpoint's logging rate. Only the most recent rows are read (by id,
    the table's key), so a large log costs the same as a recent one.
    """
    path = Path(home) / LOG_FILE
    if not path.is_file():
        return []
    with closing(_connect(path)) as conn:
        return conn.execute(
            "SELECT endpoint_id, deployed_model_id, COUNT(*) AS n FROM prediction_log "
            "WHERE id > (SELECT COALESCE(MAX(id), 0) FROM prediction_log) - ? "
            "GROUP BY endpoint_id, deployed_model_id ORDER BY n DESC, endpoint_id, deployed_model_id",
            (recent_rows,),
        ).fetchall()


def _loads(text: str) -> Any:
    """One logged JSON value: orjson (a 1M-row window reads in half the time), json for what orjson refuses
    (NaN and Infinity, which json.dumps writes)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn
