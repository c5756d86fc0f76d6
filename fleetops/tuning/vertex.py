"""Hyperparameter tuning on Vertex AI: a HyperparameterTuningJob whose trials run our image's trainer.

Each trial is a CustomJob worker running `python -m fleetops.training.trial
--spec gs://... --data gs://... --segment S` with the trial's parameters as flags
(`--learning_rate=0.01`); the trainer reads the gs:// URIs through the trial's
Cloud Storage mount and reports the tuning metric with cloudml-hypertune. The
spec the trials read and the trials' own models go under
`<pipeline root>/tuning/<study>/<request>/`, never inside the train step's
model artifact. The job is created, polled and (past the timeout) cancelled
through the platform's call layer (`fleetops.platform.vertex.calls`); its
trials come back in the same `Trial` shape as local tuning.
"""

from __future__ import annotations

import math
import os
import uuid
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetops.errors import PlatformError, UserError
from fleetops.spec import METRIC_GOALS, Algorithm, FleetSpec, ParameterKind, ParameterSpec
from fleetops.tuning.adapter import whole_numbers
from fleetops.tuning.local import FAILED, SUCCEEDED, Trial, TuningResult, study_name

if TYPE_CHECKING:
    from fleetops.platform.vertex import VertexPlatform

# The trials' image is the image this task runs in: a trial must run exactly the trainer (and the flags)
# the train step would run. A running container cannot see its own image name (Vertex sets no variable
# for it, and the pipeline's `serving_image` may be a prebuilt serving container, not ours), so the
# image names itself: the Dockerfile bakes `FLEETOPS_IMAGE` in from the build argument Cloud Build
# passes (the URI it pushes). Outside our image (a test, a notebook) set it by hand.
IMAGE_VARIABLE = "FLEETOPS_IMAGE"
# How long a step waits for one segment's tuning job before cancelling it (the spec has no setting for
# it): a day, room for a large trial budget, each trial being one segment's training, while a job
# stuck on quota or capacity does not keep the pipeline (and its bill) open without end.
TIMEOUT_SECONDS = 24 * 3600.0
# Polling starts at 30 s and doubles up to 10 min: reads are cheap, but a day of them need not be.
FIRST_POLL_SECONDS, LONGEST_POLL_SECONDS = 30.0, 600.0
MACHINE_TYPE = "n1-standard-4"
# The label a job carries so that a create refused after it took effect is found, not repeated.
REQUEST_LABEL = "fleetops-tuning-request"
_TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


def trainer_image() -> str:
    """The image the trials run: this task's own (see IMAGE_VARIABLE)."""
    image = os.environ.get(IMAGE_VARIABLE, "").strip()
    if not image:
        raise UserError(
            f"tuning on Vertex runs the trainer in the components image, named by ${IMAGE_VARIABLE} "
            "(our Dockerfile sets it from the build argument FLEETOPS_IMAGE); it is not set here"
        )
    return image


def tune_on_vertex(
    spec: FleetSpec,
    platform: VertexPlatform,
    dataset_path: str | Path,
    segment: str,
    log: Any = print,
    *,
    image: str | None = None,
    timeout_seconds: float = TIMEOUT_SECONDS,
    machine_type: str = MACHINE_TYPE,
) -> dict[str, Any]:
    """Run the segment's study as a HyperparameterTuningJob and wait for it; its tuning record (`Platform.tune`)."""
    from fleetops.platform.vertex import gcs_local_path, gcs_uri

    dataset_uri = gcs_uri(dataset_path)
    if not dataset_uri.startswith("gs://"):
        raise UserError(
            f"dataset {str(dataset_path)!r} is not in Cloud Storage (a gs:// URI or a path under the mount): "
            "a Vertex tuning job's trials read it from there"
        )
    request = uuid.uuid4().hex
    folder = f"{platform.pipeline_root.rstrip('/')}/tuning/{study_name(spec, segment)}/{request}"
    spec_file = Path(gcs_local_path(f"{folder}/spec.json"))
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(spec.to_json())
    trainer = {
        "image_uri": image or trainer_image(),
        "command": ["python", "-m", "fleetops.training.trial"],
        "args": ["--spec", f"{folder}/spec.json", "--data", dataset_uri, "--segment", segment],
    }
    worker = {"machine_spec": {"machine_type": machine_type}, "replica_count": 1, "container_spec": trainer}
    job = _with_run_settings(_tuning_job(spec, platform, worker, segment, folder), request, platform)
    try:
        created = _create(platform, job, segment, request)
    except Exception:
        spec_file.unlink(missing_ok=True)  # no job will read it
        raise
    log(f"tuning {segment}: Vertex hyperparameter tuning job {created.name}")
    finished = _wait(platform, job.api_client, created, segment, timeout_seconds, log)
    return tuning_record(spec, segment, finished)


def _tuning_job(
    spec: FleetSpec,
    platform: VertexPlatform,
    worker: dict[str, Any],
    segment: str,
    output_uri: str,
) -> Any:
    """The SDK's HyperparameterTuningJob, configured (nothing is sent): the request it would make."""
    from google.cloud import aiplatform

    settings, tuning = platform.settings, spec.tuning
    custom_job = aiplatform.CustomJob(
        display_name=f"{spec.name}-{segment}-trial"[:128],
        worker_pool_specs=[worker],
        base_output_dir=output_uri,  # each trial's AIP_MODEL_DIR is under it: outside any artifact
        staging_bucket=output_uri,
        labels=dict(settings.labels) or None,
        encryption_spec_key_name=settings.encryption_key,
        project=settings.project,
        location=settings.region,
        credentials=platform.credentials,
    )
    return aiplatform.HyperparameterTuningJob(
        display_name=f"{spec.name}-{segment}-tuning"[:128],
        custom_job=custom_job,
        metric_spec={spec.tuning_metric: METRIC_GOALS[spec.task][spec.tuning_metric]},
        parameter_spec={name: _parameter_spec(p) for name, p in tuning.parameters.items()},
        max_trial_count=tuning.max_trial_count,
        parallel_trial_count=tuning.parallel_trial_count,
        max_failed_trial_count=tuning.max_failed_trial_count,
        search_algorithm=None if tuning.algorithm is Algorithm.DEFAULT else tuning.algorithm.value,
        labels=dict(settings.labels) or None,
        encryption_spec_key_name=settings.encryption_key,
        project=settings.project,
        location=settings.region,
        credentials=platform.credentials,
    )


def _parameter_spec(parameter: ParameterSpec) -> Any:
    from google.cloud.aiplatform import hyperparameter_tuning as hpt

    scale = parameter.scale.value
    if parameter.type is ParameterKind.DOUBLE:
        return hpt.DoubleParameterSpec(min=parameter.min, max=parameter.max, scale=scale)
    if parameter.type is ParameterKind.INTEGER:
        return hpt.IntegerParameterSpec(min=int(parameter.min), max=int(parameter.max), scale=scale)
    if parameter.type is ParameterKind.CATEGORICAL:
        return hpt.CategoricalParameterSpec(values=list(parameter.values))
    return hpt.DiscreteParameterSpec(values=[float(v) for v in parameter.values], scale=scale)


def _with_run_settings(job: Any, request: str, platform: VertexPlatform) -> Any:
    """The job's resource with what `HyperparameterTuningJob.run` would add (run-as account, network) and the
    request label. `run` itself is not used: it creates and then blocks in the SDK's own polling loop,
    outside the call layer, with no bound on the wait."""
    resource = job._gca_resource
    settings = platform.settings
    trial_spec = resource.trial_job_spec
    if settings.service_account:
        trial_spec.service_account = settings.service_account
    if settings.network:
        trial_spec.network = settings.network
    resource.labels[REQUEST_LABEL] = request
    return job


def _create(platform: VertexPlatform, job: Any, segment: str, request: str) -> Any:
    parent = f"projects/{platform.settings.project}/locations/{platform.settings.region}"
    create = partial(
        job.api_client.create_hyperparameter_tuning_job, parent=parent, hyperparameter_tuning_job=job._gca_resource
    )
    return platform.calls.submit(
        f"hyperparameter tuning job creation for segment {segment!r}",
        create,
        # Created, then refused: the job carrying this request's label is there.
        already_done=lambda: _job_of_request(platform, job, parent, request),
    )


def _job_of_request(platform: VertexPlatform, job: Any, parent: str, request: str) -> Any:
    jobs = platform.calls.read(
        f"listing of the hyperparameter tuning jobs labelled {REQUEST_LABEL}={request}",
        lambda: list(
            job.api_client.list_hyperparameter_tuning_jobs(
                request={"parent": parent, "filter": f"labels.{REQUEST_LABEL}={request}"}
            )
        ),
    )
    return next((j for j in jobs if j.labels.get(REQUEST_LABEL) == request), None)


def _wait(platform: VertexPlatform, client: Any, created: Any, segment: str, timeout_seconds: float, log: Any) -> Any:
    """Poll the job until it ends; past `timeout_seconds` cancel it (it would go on spending) and fail."""
    calls, started, pause, seen = platform.calls, platform.calls.clock(), FIRST_POLL_SECONDS, None
    while True:
        job = calls.read(
            f"hyperparameter tuning job {created.name}",
            lambda: client.get_hyperparameter_tuning_job(name=created.name),
        )
        if (job.state.name, len(job.trials)) != seen:
            seen = (job.state.name, len(job.trials))
            log(f"tuning {segment}: {job.state.name}, {len(job.trials)} trial(s)")
        if job.state.name in _TERMINAL:
            break
        waited = calls.clock() - started
        if waited >= timeout_seconds:
            calls.write(
                f"cancellation of hyperparameter tuning job {job.name}",
                partial(client.cancel_hyperparameter_tuning_job, name=job.name),
            )
            raise PlatformError(
                f"Vertex AI hyperparameter tuning job {job.name} for segment {segment!r} did not finish within "
                f"{timeout_seconds / 3600:g} hour(s) ({len(job.trials)} trial(s) done); it was cancelled"
            )
        calls.sleep(min(pause, timeout_seconds - waited))
        pause = min(2 * pause, LONGEST_POLL_SECONDS)
    if job.state.name != "JOB_STATE_SUCCEEDED":
        raise PlatformError(
            f"Vertex AI hyperparameter tuning job {job.name} for segment {segment!r} ended {job.state.name}: "
            f"{job.error.message or 'no error message'}"
        )
    return job


def tuning_record(spec: FleetSpec, segment: str, job: Any) -> dict[str, Any]:
    """The finished job's trials as the local study's record: the best feasible trial by the metric's goal.

    An infeasible, failed or unmeasured trial is recorded (FAILED, with the reason) and never chosen.
    """
    goal = METRIC_GOALS[spec.task][spec.tuning_metric]
    trials = [_trial(t, spec.tuning_metric) for t in job.trials]
    succeeded = [t for t in trials if t.state == SUCCEEDED]
    if not succeeded:
        reasons = "; ".join(f"trial {t.trial_id}: {t.error}" for t in trials[:5]) or "it ran none"
        raise UserError(f"tuning {segment!r}: no trial of Vertex job {job.name} succeeded ({reasons})")
    best = max(succeeded, key=lambda t: t.value if goal == "maximize" else -t.value)
    result = TuningResult(segment, spec.tuning_metric, goal, best.parameters, best.value, trials)
    return result.to_dict() | {"scope": spec.tuning.scope, "job": job.name}


def _trial(trial: Any, metric: str) -> Trial:
    """A Vertex trial in our Trial shape; SUCCEEDED only with a finite value of the study's metric."""
    parameters = whole_numbers({p.parameter_id: p.value for p in trial.parameters})
    measured = {m.metric_id: m.value for m in trial.final_measurement.metrics}
    value = measured.get(metric)
    started, ended = trial.start_time, trial.end_time
    record = Trial(
        trial_id=trial.id,
        state=FAILED,
        parameters=parameters,
        metric=metric,
        seconds=(ended - started).total_seconds() if started and ended else 0.0,
        start_time=started.isoformat() if started else "",
    )
    if trial.state.name != "SUCCEEDED":
        record.error = f"{trial.state.name}: {trial.infeasible_reason}" if trial.infeasible_reason else trial.state.name
    elif value is None or not math.isfinite(value):
        record.error = f"reported no finite {metric} (got {value})"
    else:
        record.state, record.value = SUCCEEDED, float(value)
    return record
