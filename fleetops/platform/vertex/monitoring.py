"""Vertex-managed model monitoring: a ModelDeploymentMonitoringJob per endpoint of a fleet.

Vertex samples each endpoint's requests, computes the same distances
(Jensen-Shannon for numbers, L-infinity for categories) against the training
data (skew) and the previous window (drift), and alerts by email and Cloud
Logging. Thresholds, interval and sampling rate come from the spec's
`monitoring` section.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from fleetops.errors import UserError
from fleetops.names import LABEL_FLEET
from fleetops.spec import FleetSpec


def configure_fleet_monitoring(spec: FleetSpec, platform: Any, training_data: str) -> list[str]:
    """Create a monitoring job for each endpoint labelled with the fleet; return their resource names."""
    if not hasattr(platform, "settings"):
        raise UserError("Vertex-managed monitoring needs a vertex:// platform; on the local twin use the monitor step")
    return [
        create_monitoring_job(spec, platform, endpoint.endpoint_id, training_data)
        for endpoint in platform.endpoints.list({LABEL_FLEET: spec.name})
    ]


def create_monitoring_job(spec: FleetSpec, platform: Any, endpoint_id: str, training_data: str) -> str:
    from google.cloud import aiplatform
    from google.cloud.aiplatform import model_monitoring

    if not training_data.startswith(("bq://", "gs://")):
        raise UserError(f"training data for skew must be bq://project.dataset.table or gs://..., not {training_data!r}")
    settings, monitoring = platform.settings, spec.monitoring
    thresholds = {f: monitoring.feature_thresholds.get(f, monitoring.skew_threshold) for f in spec.features.all}
    drift = {f: monitoring.feature_thresholds.get(f, monitoring.drift_threshold) for f in spec.features.all}
    skew_config = model_monitoring.SkewDetectionConfig(
        data_source=training_data,
        target_field=spec.label,
        skew_thresholds=thresholds,
        data_format="csv" if training_data.endswith(".csv") else None,
    )
    display_name, endpoint = f"{endpoint_id}-monitoring", platform.endpoints.name(endpoint_id)
    create = partial(
        aiplatform.ModelDeploymentMonitoringJob.create,
        display_name=display_name,
        endpoint=endpoint,
        objective_configs=model_monitoring.ObjectiveConfig(
            skew_detection_config=skew_config,
            drift_detection_config=model_monitoring.DriftDetectionConfig(drift_thresholds=drift),
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
    job = platform.calls.submit(
        f"monitoring job creation for endpoint {endpoint_id!r}",
        create,
        # Created, then refused: the endpoint's job is there under its name.
        already_done=lambda: _monitoring_job(platform, endpoint, display_name),
    )
    return job.resource_name


def _monitoring_job(platform: Any, endpoint: str, display_name: str) -> Any:
    """The monitoring job of `endpoint` named `display_name`, or None."""
    from google.cloud import aiplatform

    settings = platform.settings
    jobs = platform.calls.read(
        f"listing of the monitoring jobs named {display_name!r}",
        lambda: aiplatform.ModelDeploymentMonitoringJob.list(
            filter=f'display_name="{display_name}"',
            project=settings.project,
            location=settings.region,
            credentials=platform.credentials,
        ),
    )
    return next((j for j in jobs if j.display_name == display_name and j.gca_resource.endpoint == endpoint), None)
