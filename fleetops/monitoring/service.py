"""One monitoring run for a fleet, on the local twin or on Vertex: reports, alerts, and what to retrain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fleetops.errors import UserError
from fleetops.monitoring.alerts import send_alerts
from fleetops.monitoring.jobs import EndpointReport, drifted_segments
from fleetops.monitoring.report import metrics, render_html, render_markdown
from fleetops.platform import Platform
from fleetops.spec import FleetSpec


@dataclass
class MonitoringRun:
    reports: list[EndpointReport]
    drifted: list[str]
    html: str
    markdown: str
    metrics: dict[str, float]
    alerts: list[dict]


def run_monitoring(spec: FleetSpec, platform: Platform, now: datetime | None = None) -> MonitoringRun:
    """Monitor every endpoint of the fleet, raise alerts, and name the segments to retrain.

    The platform monitors (`Platform.monitor`: the twin judges its request log, Vertex reads its
    monitoring jobs' results); alerts go to the webhook and the log here, and are kept where the
    platform keeps them (`Platform.record_alerts`).
    """
    reports = platform.monitor(spec, now)
    alerts = send_alerts(spec.name, reports, webhook=spec.monitoring.webhook)
    platform.record_alerts(spec.name, alerts)
    return MonitoringRun(
        reports=reports,
        drifted=drifted_segments(reports),
        html=render_html(spec.name, reports),
        markdown=render_markdown(spec.name, reports),
        metrics=metrics(reports),
        alerts=alerts,
    )


def narrow_to_segments(spec: FleetSpec, segments: list[str]) -> FleetSpec:
    """The spec limited to `segments` (validated again, so a bad segment list fails here, not in training)."""
    from fleetops.spec import parse_spec

    if not segments:
        raise UserError("no segments to retrain: monitoring flagged none")
    data = spec.model_dump(mode="json")
    data["data"]["segments"] = sorted(segments)
    return parse_spec(data)
