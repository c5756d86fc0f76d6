"""Vertex AI Pipelines: build a `PipelineJob` from a compiled template, and submit it.

Building is offline (with AnonymousCredentials in tests and dry runs);
`pipeline_job_request` is the HTTP request `submit_pipeline_job` would send,
derived the way the SDK derives it; only `submit` talks to Vertex.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from fleetops.errors import UserError
from fleetops.platform import PipelineRun, Submission, VertexSettings
from fleetops.platform.vertex.calls import VertexCalls

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


def run_as(settings: VertexSettings) -> dict[str, str | None]:
    """The `PipelineJob.submit` arguments: the run runs as the platform's service account, on its network."""
    return {"service_account": settings.service_account, "network": settings.network}


def submit_pipeline_job(job: Any, settings: VertexSettings, calls: VertexCalls | None = None) -> str:
    """Submit (does not wait); runs as the platform's service account on its network.

    The request is `PipelineJob.submit`'s own createPipelineJob (`pipeline_job_request` prints it),
    without what `submit()` does around it: it creates the pipeline root's bucket when missing, grants
    the default compute account on it, and checks the bucket's owner through Resource Manager.
    fleetops creates no bucket and changes no IAM policy: the platform URI names a bucket that exists.
    Paced and retried by the call layer; a submission whose answer was lost is found by its job id
    (fixed when the job was built), so a retry starts no second run.
    """
    calls = calls or VertexCalls(settings)
    resource = _run_as_resource(job, settings)

    def create() -> Any:
        job._gca_resource = job.api_client.create_pipeline_job(
            parent=job._parent, pipeline_job=resource, pipeline_job_id=job.job_id
        )
        return job._gca_resource

    calls.submit(f"pipeline job {job.job_id!r}", create, already_done=lambda: _existing_job(job, calls))
    return job_name(job)


def job_name(job: Any) -> str:
    """The job's resource name, known before it is sent: its parent and its job id."""
    return f"{job._parent}/pipelineJobs/{job.job_id}"


def _existing_job(job: Any, calls: VertexCalls) -> Any:
    """The run a lost answer may have created: the job id is known before the request is sent."""
    from google.api_core import exceptions
    from google.cloud import aiplatform

    name = job_name(job)
    try:
        return calls.read(f"pipeline job {name}", lambda: aiplatform.PipelineJob.get(name, credentials=job.credentials))
    except exceptions.NotFound:
        return None


def submit(platform: Any, run: PipelineRun, dry_run: bool = False) -> Submission:
    """`VertexPlatform.submit_pipeline`: a PipelineJob with the platform's root, labels, key, account, network."""
    job = _job(platform, run)
    if dry_run:
        return Submission(job_name(job), request=pipeline_job_request(job, platform.settings))
    return Submission(submit_pipeline_job(job, platform.settings, platform.calls))


def schedule(
    platform: Any, run: PipelineRun, cron: str | None, every_minutes: float | None, dry_run: bool = False
) -> Submission:
    """`VertexPlatform.schedule_pipeline`: a PipelineJobSchedule of the run on `cron`."""
    if every_minutes is not None:
        raise UserError(f"a Vertex schedule runs on cron, not every_minutes {every_minutes!r}: use --cron")
    if not cron:
        raise UserError("a Vertex schedule needs a cron, e.g. --cron '0 * * * *'")
    check_cron(cron)
    job = _job(platform, run)
    name = f"{run.display_name}-schedule"
    if dry_run:
        body = pipeline_job_request(job, platform.settings)["body"]
        request = {"displayName": name, "cron": cron, "maxConcurrentRunCount": 1, "createPipelineJobRequest": body}
        return Submission(name, request=request)
    return Submission(create_schedule(job, platform.settings, cron, name, calls=platform.calls))


def _job(platform: Any, run: PipelineRun) -> Any:
    return build_pipeline_job(
        platform.settings,
        run.template,
        run.parameters,
        display_name=run.display_name,
        job_id=run.job_id,
        enable_caching=run.enable_caching,
        labels=run.labels,
        credentials=platform.credentials,
    )


def check_cron(cron: str) -> None:
    if len(cron.split()) != 5:
        raise UserError(f"cron {cron!r} must have 5 fields (minute hour day-of-month month day-of-week)")


def pipeline_job_request(job: Any, settings: VertexSettings) -> dict[str, Any]:
    """The createPipelineJob HTTP request `submit_pipeline_job` sends (method, url, params, JSON body).

    Built offline the way google-cloud-aiplatform builds it, so a dry run cannot drift from a submit:
    `PipelineJob.submit` sets the service account and network (else `aiplatform.init`'s) on the job's
    resource and calls `create_pipeline_job(parent, pipeline_job, pipeline_job_id)`, which the REST
    transport transcodes with its http rule into a POST whose body is the resource in REST field names
    (`serviceAccount`, `encryptionSpec.kmsKeyName`, `runtimeConfig.parameterValues`, ...). Without
    `api_transport="rest"` the SDK sends the same message over gRPC; this is its REST form. The job
    itself is left as it was.
    """
    from google.cloud.aiplatform_v1._compat import transcode_request
    from google.cloud.aiplatform_v1.services.pipeline_service.transports.rest_base import (
        _BasePipelineServiceRestTransport as RestRules,
    )
    from google.cloud.aiplatform_v1.types import CreatePipelineJobRequest

    resource = _run_as_resource(job, settings)
    request = CreatePipelineJobRequest(parent=job._parent, pipeline_job=resource, pipeline_job_id=job.job_id)
    http, body, params = transcode_request(
        RestRules._BaseCreatePipelineJob._get_http_options(), request, rest_numeric_enums=True
    )
    host = job.api_client.api_endpoint  # the regional host, or aiplatform.init's api_endpoint
    return {
        "method": http["method"].upper(),
        "url": f"{host if '://' in host else 'https://' + host}{http['uri']}",  # as the REST transport adds it
        "params": params,
        "body": json.loads(body),
    }


def _run_as_resource(job: Any, settings: VertexSettings) -> Any:
    """A copy of the job's resource with the service account and network set as `PipelineJob.submit` sets
    them (the platform's, else `aiplatform.init`'s); the job itself is left as it was."""
    from google.cloud.aiplatform import initializer

    resource = copy.deepcopy(job._gca_resource)
    arguments = run_as(settings)
    service_account = arguments["service_account"] or initializer.global_config.service_account
    network = arguments["network"] or initializer.global_config.network
    if service_account:
        resource.service_account = service_account
    if network:
        resource.network = network
    return resource


def create_schedule(
    job: Any,
    settings: VertexSettings,
    cron: str,
    display_name: str,
    max_concurrent_run_count: int = 1,
    calls: VertexCalls | None = None,
) -> str:
    """A `PipelineJobSchedule` running `job` on `cron`, as the platform's service account on its network."""
    from google.cloud import aiplatform

    check_cron(cron)
    if max_concurrent_run_count < 1:
        raise UserError(f"max_concurrent_run_count {max_concurrent_run_count} must be at least 1")
    schedule = aiplatform.PipelineJobSchedule(
        pipeline_job=job,
        display_name=display_name,
        credentials=job.credentials,
        project=settings.project,
        location=settings.region,
    )
    (calls or VertexCalls(settings)).write(
        f"schedule {display_name!r}",
        lambda: schedule.create(
            cron=cron,
            max_concurrent_run_count=max_concurrent_run_count,
            service_account=settings.service_account,
            network=settings.network,
        ),
    )
    return schedule.resource_name
