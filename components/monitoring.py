"""Monitoring components: skew and drift of a fleet's endpoints (the twin's request log or Vertex's monitoring jobs)."""

from typing import NamedTuple

from kfp.dsl import HTML, Artifact, Input, Markdown, Metrics, Output

from components.image import fleetops_component


@fleetops_component
def monitor(
    fleet_spec: str,
    platform: str,
    report: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
    anomalies: Output[Artifact],
    scorecard: Output[HTML],
) -> bool:
    """Skew (against each model's training data) and drift (against the previous window) per endpoint.

    On the local twin every endpoint and feature is computed from the request log in one vectorised pass,
    and `monitoring.policy` judges the distances: `fixed` (Vertex's rule, above the threshold) or
    `calibrated` (above the no-drift range at the window's size, false discoveries controlled across the
    fleet). On Vertex each endpoint's ModelDeploymentMonitoringJob (created on the first run, reused after)
    computes them, and its latest results are judged against the spec's thresholds.

    Args:
        fleet_spec: The fleet spec, YAML or JSON text (its `monitoring` section sets thresholds, windows, policy).
        platform: `local:///path` (the twin's request-response log is the serving data) or
            `vertex://PROJECT/REGION?...` (Vertex's monitoring jobs sample the endpoints' traffic).
        report: Output. HTML with a baseline-vs-current chart per feature.
        summary: Output. A Markdown table per segment.
        metrics: Output. The largest skew and drift per segment, and how many segments were flagged.
        anomalies: Output. Every endpoint's findings (JSON); `segments` lists those to retrain.
        scorecard: Output. The monitoring run's fleet scorecard: totals, the segment x feature heat map of
            skew and drift, a sortable table of segments and each segment's findings (readable at 1,000).

    Returns:
        Whether any segment went over a threshold: the task's single output, for dsl.If
        (kfp.local resolves conditions only on a task's `Output`).
    """
    import json

    from fleetops.monitoring.service import run_monitoring
    from fleetops.platform import connect
    from fleetops.scorecard import render_scorecard
    from fleetops.spec import parse_spec

    spec = parse_spec(fleet_spec)
    result = run_monitoring(spec, connect(platform))
    with open(report.path, "w") as handle:
        handle.write(result.html)
    with open(summary.path, "w") as handle:
        handle.write(result.markdown)
    endpoints = [r.to_dict() for r in result.reports]
    with open(anomalies.path, "w") as handle:
        json.dump({"segments": result.drifted, "endpoints": endpoints}, handle)
    page, _ = render_scorecard([], [], {}, monitoring=endpoints, fleet=spec.name, metric=spec.primary_metric)
    with open(scorecard.path, "w") as handle:
        handle.write(page)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    anomalies.metadata["segments"] = result.drifted
    return bool(result.drifted)


@fleetops_component
def plan_retraining(fleet_spec: str, anomalies: Input[Artifact]) -> NamedTuple(
    "RetrainingPlan", retrain_spec=str, fleet_name=str
):
    """The fleet spec narrowed to the segments monitoring flagged.

    Args:
        fleet_spec: The fleet spec, YAML or JSON text.
        anomalies: The monitor step's findings.

    Returns:
        retrain_spec: The spec with `data.segments` set to the flagged segments.
        fleet_name: The fleet's name (for promoting its canaries).
    """
    import json
    from collections import namedtuple

    from fleetops.monitoring.service import narrow_to_segments
    from fleetops.spec import parse_spec

    spec = parse_spec(fleet_spec)
    with open(anomalies.path) as handle:
        segments = json.load(handle)["segments"]
    plan = namedtuple("RetrainingPlan", ["retrain_spec", "fleet_name"])
    return plan(narrow_to_segments(spec, segments).to_json(), spec.name)


@fleetops_component
def configure_vertex_monitoring(fleet_spec: str, platform: str, training_data: str) -> str:
    """Make sure each endpoint of the fleet has a Vertex ModelDeploymentMonitoringJob (skew and drift).

    The monitor step does the same on Vertex with the spec's data source as the skew baseline; this step
    sets up the jobs ahead of it, with other training data. A job already watching an endpoint is kept.

    Args:
        fleet_spec: The fleet spec (thresholds, interval, sampling rate, alert emails).
        platform: `vertex://PROJECT/REGION?...`.
        training_data: The training data for skew: bq://project.dataset.table or gs://...csv|jsonl|tfrecord.

    Returns:
        The monitoring jobs' resource names, as JSON text.
    """
    import json

    from fleetops.platform import connect
    from fleetops.platform.vertex.monitoring import configure_fleet_monitoring
    from fleetops.spec import parse_spec

    return json.dumps(configure_fleet_monitoring(parse_spec(fleet_spec), connect(platform), training_data))
