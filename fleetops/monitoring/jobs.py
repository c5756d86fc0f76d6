"""Skew and drift jobs over the local twin's request-response log, for one endpoint or a whole fleet.

Skew: each endpoint's serving window (the last `window_hours` of logged
requests answered by the deployed model that now takes most traffic) against
that model version's own training statistics, saved beside it at training.
Drift: the latest window against the window before it. A window with fewer
than `min_rows` rows is reported as such and not judged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from fleetops.monitoring.calibrate import calibrate, calibration_tests
from fleetops.monitoring.compare import FeatureResult, compare, distributions
from fleetops.monitoring.fleet import fleet_findings, windows_frame, windows_statistics
from fleetops.names import LABEL_FLEET, MODEL_STATISTICS_FILE
from fleetops.platform import Platform
from fleetops.serving.request_log import read_request_log
from fleetops.spec import FleetSpec, MonitoringPolicy
from fleetops.training.artifact import read_metadata


@dataclass
class EndpointReport:
    endpoint_id: str
    segment: str
    model_id: str
    version_id: str
    window_start: str
    window_end: str
    rows: int
    previous_rows: int
    skew: list[FeatureResult] = field(default_factory=list)
    drift: list[FeatureResult] = field(default_factory=list)
    note: str = ""

    @property
    def skew_anomaly(self) -> bool:
        return any(r.anomaly for r in self.skew)

    @property
    def drift_anomaly(self) -> bool:
        return any(r.anomaly for r in self.drift)

    @property
    def anomalies(self) -> list[str]:
        found = [f"skew {r.feature}" for r in self.skew if r.anomaly]
        return found + [f"drift {r.feature}" for r in self.drift if r.anomaly]

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint_id": self.endpoint_id,
            "segment": self.segment,
            "model_id": self.model_id,
            "version_id": self.version_id,
            "window": {"start": self.window_start, "end": self.window_end, "rows": self.rows},
            "previous_rows": self.previous_rows,
            "skew_anomaly": self.skew_anomaly,
            "drift_anomaly": self.drift_anomaly,
            "anomalies": self.anomalies,
            "note": self.note,
            "skew": [r.to_dict() for r in self.skew],
            "drift": [r.to_dict() for r in self.drift],
        }


def monitor_fleet(
    spec: FleetSpec, platform: Platform, home: str | Path, now: datetime | None = None
) -> list[EndpointReport]:
    """One report per endpoint of the fleet (endpoints labelled `fleet=<name>`), every segment in one pass.

    Each endpoint's windows are read as `monitor_endpoint` reads them; then skew
    and drift of all of them are computed together (`fleet.py`), with the same
    results as `monitor_endpoint` one endpoint at a time. Under the `calibrated` policy the
    distance tests of all endpoints are then judged together (calibrate.py).
    """
    windows = [
        _windows(spec, platform, home, endpoint.endpoint_id, now)
        for endpoint in platform.endpoints.list({LABEL_FLEET: spec.name})
    ]
    return _judge(spec, windows)


def _judge(spec: FleetSpec, windows: list[_Windows]) -> list[EndpointReport]:
    """Skew and drift of every window in one pass; under `calibrated`, all their tests judged together."""
    numeric, categorical, features = spec.features.numeric, spec.features.categorical, spec.features.all
    thresholds, monitoring = spec.monitoring.feature_thresholds, spec.monitoring
    skewed = [w for w in windows if w.baseline is not None]
    calibrated = monitoring.policy is MonitoringPolicy.CALIBRATED
    tests = []
    if skewed:
        served = [w.served for w in skewed]
        baselines = [w.baseline for w in skewed]
        currents = windows_statistics(served, numeric, categorical)
        found = fleet_findings(baselines, currents, features, thresholds, monitoring.skew_threshold).results()
        for w, results in zip(skewed, found, strict=True):
            w.report.skew = results
        if calibrated:
            frame, groups, _ = windows_frame(served, features)
            tests += calibration_tests(found, baselines, currents.to_dicts(), frame, groups, numeric)
    drifting = [w for w in windows if w.previous is not None]
    if drifting:
        before = windows_statistics([w.previous for w in drifting], numeric, categorical)
        after = windows_statistics([w.current for w in drifting], numeric, categorical)
        found = fleet_findings(before, after, features, thresholds, monitoring.drift_threshold).results()
        for w, results in zip(drifting, found, strict=True):
            w.report.drift = results
        if calibrated:
            frame, groups, _ = windows_frame([w.current for w in drifting], features)
            tests += calibration_tests(found, before.to_dicts(), after.to_dicts(), frame, groups, numeric)
    if calibrated:
        calibrate(tests, monitoring.alpha, monitoring.false_discovery_rate, monitoring.resamples, monitoring.seed)
    return [w.report for w in windows]


@dataclass
class _Windows:
    report: EndpointReport
    served: pd.DataFrame | None = None
    baseline: dict[str, Any] | None = None
    current: pd.DataFrame | None = None
    previous: pd.DataFrame | None = None


def monitor_endpoint(
    spec: FleetSpec, platform: Platform, home: str | Path, endpoint_id: str, now: datetime | None = None
) -> EndpointReport:
    """One endpoint's skew and drift on its own (the fleet pass gives the same results for all at once).

    Under the `calibrated` policy the endpoint's tests are judged as a fleet of one.
    """
    w = _windows(spec, platform, home, endpoint_id, now)
    if spec.monitoring.policy is MonitoringPolicy.CALIBRATED:
        return _judge(spec, [w])[0]
    numeric, categorical, features = spec.features.numeric, spec.features.categorical, spec.features.all
    thresholds = spec.monitoring.feature_thresholds
    if w.baseline is not None:
        served_stats = distributions(w.served, numeric, categorical)
        w.report.skew = compare(w.baseline, served_stats, features, thresholds, spec.monitoring.skew_threshold)
    if w.previous is not None:
        before, after = distributions(w.previous, numeric, categorical), distributions(w.current, numeric, categorical)
        w.report.drift = compare(before, after, features, thresholds, spec.monitoring.drift_threshold)
    return w.report


def _windows(
    spec: FleetSpec, platform: Platform, home: str | Path, endpoint_id: str, now: datetime | None = None
) -> _Windows:
    """An endpoint's report (without findings) and the windows to judge: those with enough rows."""
    endpoint = platform.endpoints.get(endpoint_id)
    end = now or datetime.now(UTC)
    start = end - timedelta(hours=spec.monitoring.window_hours)
    log = read_request_log(home, endpoint_id, since=(start - timedelta(hours=spec.monitoring.window_hours)).isoformat())
    times = pd.to_datetime(log["time"], utc=True) if not log.empty else pd.Series([], dtype="datetime64[ns, UTC]")
    current = log[(times >= start) & (times < end)]
    previous = log[times < start]
    window = (start.isoformat(), end.isoformat(), len(current), len(previous))
    if not endpoint.deployed_models:
        report = EndpointReport(endpoint_id, endpoint_id, "", "", *window, note="nothing is deployed on this endpoint")
        return _Windows(report)
    serving = max(endpoint.deployed_models, key=lambda m: endpoint.traffic_split.get(m.deployed_model_id, 0))
    version = platform.registry.get_version(serving.model_id, serving.version_id)
    artifact = platform.registry.artifact_path(version)
    segment = read_metadata(artifact)["segment"]
    w = _Windows(EndpointReport(endpoint_id, segment, serving.model_id, serving.version_id, *window))
    min_rows = spec.monitoring.min_rows
    served = current[current["version_id"] == serving.version_id] if not current.empty else current
    if len(served) >= min_rows:
        w.served, w.baseline = served, json.loads((artifact / MODEL_STATISTICS_FILE).read_text())
    else:
        w.report.note = (
            f"{len(served)} logged request row(s) for v{serving.version_id} in the window; "
            f"at least {min_rows} are needed to judge skew"
        )
    if len(current) >= min_rows and len(previous) >= min_rows:
        w.current, w.previous = current, previous
    else:
        w.report.note = " ".join(
            filter(None, [w.report.note, f"drift needs {min_rows} rows in both windows (previous: {len(previous)})"])
        )
    return w


def drifted_segments(reports: list[EndpointReport]) -> list[str]:
    """The segments whose serving model saw skew or drift above a threshold: the ones to retrain."""
    return sorted({r.segment for r in reports if r.skew_anomaly or r.drift_anomaly})
