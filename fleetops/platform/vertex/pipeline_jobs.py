"""Vertex AI Pipelines: build a `PipelineJob` from a compiled template, and submit it.

Building is offline (with AnonymousCredentials in tests, `job._gca_resource`
is exactly the request `submit()` sends); only `submit` talks to Vertex.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fleetops.errors import UserError
from fleetops.platform import VertexSettings

JOB_ID_PATTERN = re.compile(r"^[a-z][-a-z0-9]{0,127}$")


def build_pipeline_job(
    settings: VertexSettings,
    template_path: str | Path,
    parameter_values: dict[str, Any],
    *,
    display_name: str,
    job_id: str | None = None,
    enable_caching: bool | None = None,
    labels: dict[str, str] | None = None,
    credentials: Any = None,
) -> Any:
    """An `aiplatform.PipelineJob` carrying the platform's pipeline root, labels and CMEK key."""
    from google.cloud import aiplatform

    from fleetops.platform.registry import check_labels

    if job_id is not None and not JOB_ID_PATTERN.fullmatch(job_id):
        raise UserError(f"pipeline job id {job_id!r} is invalid: it must match [a-z][-a-z0-9]{{0,127}}")
    all_labels = {**settings.labels, **(labels or {})}
    check_labels(all_labels)
    root = settings.resolved_pipeline_root()
    return aiplatform.PipelineJob(
        display_name=display_name,
        template_path=str(template_path),
        job_id=job_id,
        pipeline_root=root,
        parameter_values=parameter_values,
        enable_caching=enable_caching,
        labels=all_labels or None,
        encryption_spec_key_name=settings.encryption_key,
        project=settings.project,
        location=settings.region,
        credentials=credentials,
    )


def submit_pipeline_job(job: Any, settings: VertexSettings) -> str:
    """Submit (does not wait); runs as the platform's service account on its network."""
    job.submit(service_account=settings.service_account, network=settings.network)
    return job.resource_name


def create_schedule(
    job: Any, settings: VertexSettings, cron: str, display_name: str, max_concurrent_run_count: int = 1
) -> str:
    """A `PipelineJobSchedule` running `job` on `cron`, as the platform's service account on its network."""
    from google.cloud import aiplatform

    if len(cron.split()) != 5:
        raise UserError(f"cron {cron!r} must have 5 fields (minute hour day-of-month month day-of-week)")
    if max_concurrent_run_count < 1:
        raise UserError(f"max_concurrent_run_count {max_concurrent_run_count} must be at least 1")
    schedule = aiplatform.PipelineJobSchedule(
        pipeline_job=job,
        display_name=display_name,
        credentials=job.credentials,
        project=settings.project,
        location=settings.region,
    )
    schedule.create(
        cron=cron,
        max_concurrent_run_count=max_concurrent_run_count,
        service_account=settings.service_account,
        network=settings.network,
    )
    return schedule.resource_name
