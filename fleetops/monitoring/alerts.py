"""Monitoring alerts: the local twin's alert log, an optional webhook, and a structured log line.

Every flagged endpoint becomes one alert. It is POSTed as JSON to the webhook
when one is configured (a failed delivery is recorded on the alert, never
raised), printed as a structured JSON line with severity WARNING, which Cloud
Logging ingests from Vertex pipeline steps, and kept where the platform keeps
alerts (`Platform.record_alerts`): on the local twin, appended to
`<home>/monitoring.sqlite` (table `alerts`); on Vertex nowhere more, as the
monitoring jobs email `alert_emails` and log their anomalies to Cloud Logging
themselves.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import urllib.request
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetops.monitoring.jobs import EndpointReport

ALERTS_FILE = "monitoring.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    fleet TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    delivery TEXT NOT NULL
);
"""


def send_alerts(
    fleet: str, reports: list[EndpointReport], home: str | Path | None = None, webhook: str | None = None
) -> list[dict[str, Any]]:
    """Raise one alert per flagged endpoint; return the alerts with how each was delivered."""
    alerts = []
    for report in reports:
        if not report.anomalies:
            continue
        results = {r.feature: r.distance for r in [*report.skew, *report.drift] if r.anomaly}
        details = [
            {
                "finding": f"{kind} {r.feature}",
                "distance": r.distance,
                "no_drift_range": r.no_drift_range if r.no_drift_range is not None else [0.0, r.threshold],
                "p_value": r.p_value,
                "policy": r.policy,
                "note": r.note,
            }
            for kind, found in (("skew", getattr(report, "skew", [])), ("drift", getattr(report, "drift", [])))
            for r in found
            if r.anomaly
        ]
        alert = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "fleet": fleet,
            "endpoint_id": report.endpoint_id,
            "segment": report.segment,
            "model": f"{report.model_id}@{report.version_id}",
            "anomalies": report.anomalies,
            "distances": results,
            "details": details,
        }
        alert["delivery"] = _post(webhook, alert) if webhook else "no webhook configured"
        print(
            json.dumps({"severity": "WARNING", "message": f"fleetops monitoring alert: {report.segment}", **alert}),
            file=sys.stdout,
            flush=True,
        )
        alerts.append(alert)
    if home is not None:
        record_alerts(home, fleet, alerts)
    return alerts


def record_alerts(home: str | Path, fleet: str, alerts: list[dict[str, Any]]) -> None:
    """Append `alerts` to the twin's alert log under `home` (all of them or none)."""
    if not alerts:
        return
    path = Path(home) / ALERTS_FILE
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(_SCHEMA)
        conn.executemany(
            "INSERT INTO alerts (time, fleet, endpoint_id, payload, delivery) VALUES (?, ?, ?, ?, ?)",
            [(a["time"], fleet, a["endpoint_id"], json.dumps(a), a["delivery"]) for a in alerts],
        )


def read_alerts(home: str | Path) -> list[dict[str, Any]]:
    path = Path(home) / ALERTS_FILE
    if not path.is_file():
        return []
    with closing(sqlite3.connect(path)) as conn:
        return [json.loads(row[0]) for row in conn.execute("SELECT payload FROM alerts ORDER BY id")]


def _post(url: str, alert: dict[str, Any]) -> str:
    request = urllib.request.Request(
        url, data=json.dumps(alert).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return f"webhook answered {response.status}"
    except OSError as exc:  # an unreachable webhook must not stop the monitoring run
        return f"webhook failed: {exc}"
