"""Vertex-managed model monitoring: a ModelDeploymentMonitoringJob per endpoint of a fleet, and its results.

Vertex samples each endpoint's requests, computes the same distances
(Jensen-Shannon for numbers, L-infinity for categories) against the training
data (skew) and the previous window (drift), and alerts by email and Cloud
Logging. Thresholds, interval, sampling rate and alert emails come from the
spec's `monitoring` section.

`monitor_fleet` is `VertexPlatform.monitor`: it makes sure every endpoint of the
fleet has its job (one listing finds the jobs already there, by the endpoint
they watch, so a rerun reuses them; a missing one is created), then reads each
job's latest stats anomalies for the deployed model taking most of the
endpoint's traffic and turns them into the `EndpointReport`s the local twin
gives. A job keeps the thresholds it was created with; a report notes where
Vertex's threshold differs from the spec's (the spec's decides the anomaly).

Skew needs the training data where Vertex reads it: the spec's data source
when it is a bq:// table or a gs:// CSV / JSONL / TFRecord file; otherwise the
jobs watch drift only, and each report says why.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from fleetops.errors import UserError
from fleetops.monitoring.compare import FeatureResult
from fleetops.monitoring.jobs import EndpointReport
from fleetops.names import LABEL_FLEET
from fleetops.platform import Platform
from fleetops.platform.endpoints import DeployedModel, Endpoint
from fleetops.spec import FleetSpec, MonitoringPolicy
from fleetops.training.artifact import read_metadata

if TYPE_CHECKING:
    from fleetops.platform.vertex import VertexPlatform

SKEW = "RAW_FEATURE_SKEW"
DRIFT = "RAW_FEATURE_DRIFT"
# The formats Vertex reads training data in from Cloud Storage (SkewDetectionConfig's data_format).
_GCS_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".tfrecord": "tf-record"}


def configure_fleet_monitoring(spec: FleetSpec, platform: Platform, training_data: str) -> list[str]:
    """Make sure each endpoint labelled with the fleet has a monitoring job; return their resource names.

    `training_data` (bq:// or gs://) is the skew baseline of the jobs created now; jobs already there are kept.
    """
    check_training_data(training_data)
    jobs = ensure_monitoring_jobs(spec, _vertex(platform), training_data)
    return [job.resource_name for job in jobs.values()]


def monitor_fleet(spec: FleetSpec, platform: VertexPlatform, now: datetime | None = None) -> list[EndpointReport]:
    """One report per endpoint of the fleet, from its monitoring job's latest results up to `now`."""
    training_data, without_skew = skew_baseline(spec)
    endpoints = platform.endpoints.list({LABEL_FLEET: spec.name})
    jobs = ensure_monitoring_jobs(spec, platform, training_data, endpoints)
    return [
        _endpoint_report(spec, platform, endpoint, jobs[endpoint.endpoint_id], without_skew, now)
        for endpoint in endpoints
    ]


def skew_baseline(spec: FleetSpec) -> tuple[str | None, str]:
    """The spec's data source when Vertex can read it as training data for skew, else None and why not."""
    source = spec.data.source
    try:
        check_training_data(source)
    except UserError as reason:
        return None, f"skew is not monitored on Vertex: {reason}"
    return source, ""


def check_training_data(uri: str) -> None:
    """Vertex's skew baseline: a BigQuery table, or a CSV, JSONL or TFRecord file in Cloud Storage."""
    if uri.startswith("bq://"):
        return
    if not uri.startswith("gs://"):
        raise UserError(f"training data for skew must be bq://project.dataset.table or gs://..., not {uri!r}")
    if _gcs_format(uri) is None:
        raise UserError(f"training data {uri!r} in Cloud Storage must be one of {sorted(_GCS_FORMATS)} for skew")


def _gcs_format(uri: str) -> str | None:
    return next((f for suffix, f in _GCS_FORMATS.items() if uri.lower().endswith(suffix)), None)


def _vertex(platform: Platform) -> VertexPlatform:
    from fleetops.platform.vertex import VertexPlatform

    if not isinstance(platform, VertexPlatform):
        raise UserError(
            f"Vertex-managed monitoring needs a vertex:// platform, not {platform.uri}; "
            "on the local twin the monitor step judges the request log itself"
        )
    return platform


# -- the jobs ----------------------------------------------------------------------------------


def ensure_monitoring_jobs(
    spec: FleetSpec,
    platform: VertexPlatform,
    training_data: str | None,
    endpoints: list[Endpoint] | None = None,
) -> dict[str, Any]:
    """Endpoint id -> its monitoring job (the SDK's object): the one watching it already, else a new one."""
    if endpoints is None:
        endpoints = platform.endpoints.list({LABEL_FLEET: spec.name})
    existing = _jobs_by_endpoint(platform)
    jobs = {}
    for endpoint in endpoints:
        job = existing.get(platform.endpoints.name(endpoint.endpoint_id))
        if job is None:
            job = create_monitoring_job(spec, platform, endpoint.endpoint_id, training_data)
        elif _watched(job) != {m.deployed_model_id for m in endpoint.deployed_models}:
            job = _watch_deployed_models(platform, job, endpoint)
        jobs[endpoint.endpoint_id] = job
    return jobs


def create_monitoring_job(
    spec: FleetSpec, platform: VertexPlatform, endpoint_id: str, training_data: str | None
) -> Any:
    """A ModelDeploymentMonitoringJob on the endpoint: skew (when `training_data` is given) and drift."""
    from google.cloud import aiplatform
    from google.cloud.aiplatform import model_monitoring

    settings, monitoring = platform.settings, spec.monitoring
    skew_config = None
    if training_data is not None:
        check_training_data(training_data)
        skew_config = model_monitoring.SkewDetectionConfig(
            data_source=training_data,
            target_field=spec.label,
            skew_thresholds=_thresholds(spec, monitoring.skew_threshold),
            data_format=_gcs_format(training_data) if training_data.startswith("gs://") else None,
        )
    endpoint = platform.endpoints.name(endpoint_id)
    create = partial(
        aiplatform.ModelDeploymentMonitoringJob.create,
        display_name=f"{endpoint_id}-monitoring",
        endpoint=endpoint,
        objective_configs=model_monitoring.ObjectiveConfig(
            skew_detection_config=skew_config,
            drift_detection_config=model_monitoring.DriftDetectionConfig(
                drift_thresholds=_thresholds(spec, monitoring.drift_threshold)
            ),
        ),
        logging_sampling_strategy=model_monitoring.RandomSampleConfig(sample_rate=monitoring.sampling_rate),
        schedule_config=model_monitoring.ScheduleConfig(monitor_interval=monitoring.interval_hours),
        alert_config=model_monitoring.EmailAlertConfig(user_emails=list(monitoring.alert_emails), enable_logging=True),
        labels={**settings.labels, LABEL_FLEET: spec.name},
        encryption_spec_key_name=settings.encryption_key,
        project=settings.project,
        location=settings.region,
        credentials=platform.credentials,
    )
    return platform.calls.submit(
        f"monitoring job creation for endpoint {endpoint_id!r}",
        create,
        # Created, then refused: the endpoint's job is there.
        already_done=lambda: _jobs_by_endpoint(platform).get(endpoint),
    )


def _watched(job: Any) -> set[str]:
    """The deployed models a job watches (it has an objective config for each)."""
    return {c.deployed_model_id for c in job.gca_resource.model_deployment_monitoring_objective_configs}


def _watch_deployed_models(platform: VertexPlatform, job: Any, endpoint: Endpoint) -> Any:
    """The job made to watch exactly the endpoint's deployed models (a canary deployed since it was created,
    not one since undeployed), each new one with the objective the job already has (its training data and
    thresholds): a job watches the deployed models it was given, not those deployed after."""
    from google.cloud.aiplatform_v1.types import ModelDeploymentMonitoringObjectiveConfig
    from google.protobuf import field_mask_pb2

    current = job.gca_resource
    configs = {c.deployed_model_id: c for c in current.model_deployment_monitoring_objective_configs}
    if not configs:  # Vertex refuses a job without one, so this is a job in a state we do not know
        raise UserError(f"monitoring job {current.name} has no objective configs to extend; delete it to recreate")
    objective = next(iter(configs.values())).objective_config
    deployed = [m.deployed_model_id for m in endpoint.deployed_models]
    current.model_deployment_monitoring_objective_configs = [
        configs.get(d) or ModelDeploymentMonitoringObjectiveConfig(deployed_model_id=d, objective_config=objective)
        for d in deployed
    ]
    client = job.api_client.select_version("v1")
    mask = field_mask_pb2.FieldMask(paths=["model_deployment_monitoring_objective_configs"])
    platform.calls.write(
        f"monitoring job update of {current.name} to watch deployed models {deployed}",
        lambda: client.update_model_deployment_monitoring_job(
            model_deployment_monitoring_job=current, update_mask=mask
        ).result(),
    )
    return job


def _thresholds(spec: FleetSpec, default: float) -> dict[str, float]:
    return {f: spec.monitoring.feature_thresholds.get(f, default) for f in spec.features.all}


def _jobs_by_endpoint(platform: VertexPlatform) -> dict[str, Any]:
    """Endpoint resource name -> the monitoring job watching it, over the project's region.

    Vertex lets one monitoring job watch an endpoint, so the endpoint finds it, whoever created it.
    """
    from google.cloud import aiplatform

    settings = platform.settings
    jobs = platform.calls.read(
        f"listing of the monitoring jobs in {settings.project}/{settings.region}",
        lambda: aiplatform.ModelDeploymentMonitoringJob.list(
            project=settings.project, location=settings.region, credentials=platform.credentials
        ),
    )
    return {job.gca_resource.endpoint: job for job in jobs}


# -- the results -------------------------------------------------------------------------------


def _endpoint_report(
    spec: FleetSpec, platform: VertexPlatform, endpoint: Endpoint, job: Any, without_skew: str, now: datetime | None
) -> EndpointReport:
    """The endpoint's report from its job's latest skew and drift results for the model taking most traffic."""
    if not endpoint.deployed_models:
        return EndpointReport(endpoint.endpoint_id, endpoint.endpoint_id, "", "", "", "", 0, 0, note=_NOTHING_DEPLOYED)
    serving = max(endpoint.deployed_models, key=lambda m: endpoint.traffic_split.get(m.deployed_model_id, 0))
    stats = _stats_anomalies(platform, job, serving, now)
    skew = _windows(stats, SKEW)
    drift = _windows(stats, DRIFT)
    starts = [w.start_time for windows in (skew, drift) for w in windows.values() if w.start_time]
    ends = [w.end_time for windows in (skew, drift) for w in windows.values() if w.end_time]
    report = EndpointReport(
        endpoint.endpoint_id,
        _segment(platform, serving),
        serving.model_id,
        serving.version_id,
        min(starts).isoformat() if starts else "",
        max(ends).isoformat() if ends else "",
        rows=0,
        previous_rows=0,
        skew=_results(spec, skew, spec.monitoring.skew_threshold) if skew else [],
        drift=_results(spec, drift, spec.monitoring.drift_threshold) if drift else [],
    )
    report.note = " ".join(filter(None, _notes(spec, job, skew, drift, without_skew)))
    return report


_NOTHING_DEPLOYED = "nothing is deployed on this endpoint"


def _stats_anomalies(platform: VertexPlatform, job: Any, serving: DeployedModel, now: datetime | None) -> list[Any]:
    """Every ModelMonitoringStatsAnomalies of the job for the deployed model, skew and drift, up to `now`."""
    from google.cloud.aiplatform_v1.types import ModelDeploymentMonitoringObjectiveType, job_service

    request_type = job_service.SearchModelDeploymentMonitoringStatsAnomaliesRequest
    request = request_type(
        model_deployment_monitoring_job=job.resource_name,
        deployed_model_id=serving.deployed_model_id,
        objectives=[
            request_type.StatsAnomaliesObjective(type_=ModelDeploymentMonitoringObjectiveType[objective])
            for objective in (SKEW, DRIFT)
        ],
        end_time=now,
    )
    client = job.api_client.select_version("v1")
    return platform.calls.read(
        f"search of the stats anomalies of monitoring job {job.resource_name}",
        lambda: list(client.search_model_deployment_monitoring_stats_anomalies(request=request)),
    )


def _windows(stats: list[Any], objective: str) -> dict[str, Any]:
    """Feature -> its latest window's FeatureStatsAnomaly for one objective (skew or drift)."""
    latest: dict[str, Any] = {}
    for anomalies in stats:
        if anomalies.objective.name != objective:
            continue
        for feature in anomalies.feature_stats:
            for window in feature.prediction_stats:
                name = feature.feature_display_name
                if name not in latest or _end(window) > _end(latest[name]):
                    latest[name] = window
    return latest


def _end(window: Any) -> datetime:
    return window.end_time or datetime.min.replace(tzinfo=UTC)


def _results(spec: FleetSpec, windows: dict[str, Any], default: float) -> list[FeatureResult]:
    """A FeatureResult per feature of the spec: Vertex's deviation judged against the spec's threshold."""
    results = []
    for name in spec.features.all:
        kind = "numeric" if name in spec.features.numeric else "categorical"
        metric = "jensen_shannon" if kind == "numeric" else "l_infinity"
        threshold = spec.monitoring.feature_thresholds.get(name, default)
        window = windows.get(name)
        if window is None:
            note = "Vertex reported no statistics for this feature"
            results.append(FeatureResult(name, kind, metric, None, threshold, False, note=note))
            continue
        deviation = window.distribution_deviation
        note = ""
        if window.anomaly_detection_threshold and window.anomaly_detection_threshold != threshold:
            note = (
                f"Vertex's job judges against {window.anomaly_detection_threshold} (created with other thresholds); "
                f"this report uses the spec's {threshold}"
            )
        results.append(FeatureResult(name, kind, metric, deviation, threshold, deviation > threshold, note=note))
    return results


def _notes(spec: FleetSpec, job: Any, skew: dict, drift: dict, without_skew: str) -> list[str]:
    """Why a report has less than skew and drift for every feature."""
    every = f"every {spec.monitoring.interval_hours} h"
    waiting = f"no {{}} results yet from {job.resource_name} (runs {every})"
    notes = [without_skew or ("" if skew else waiting.format("skew")), "" if drift else waiting.format("drift")]
    if skew or drift:
        notes.append("Vertex's results give distances; the row counts stay in its statistics (statsUri)")
    if spec.monitoring.policy is not MonitoringPolicy.FIXED:
        notes.append(f"Vertex judges with the fixed rule (the {spec.monitoring.policy.value} policy runs on the twin)")
    return notes


def _segment(platform: VertexPlatform, serving: DeployedModel) -> str:
    """The segment a deployed version was trained for, from its artifact (read through the Cloud Storage mount)."""
    version = platform.registry.get_version(serving.model_id, serving.version_id)
    artifact = platform.registry.artifact_path(version)
    if not artifact.is_dir():
        raise UserError(
            f"the artifact of {version.versioned_name} ({version.artifact_uri}) is not readable at {artifact}: "
            "a Vertex task sees Cloud Storage there; elsewhere set FLEETOPS_GCS_MOUNT to a copy of its buckets"
        )
    return read_metadata(artifact)["segment"]
