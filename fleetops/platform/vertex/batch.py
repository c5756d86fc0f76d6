"""A fleet's batch prediction on Vertex AI: a BatchPredictionJob per segment, run concurrently.

One job per segment: a job scores with one model version, and each segment has its own model
(`model_id(fleet, segment)`), so a segment and a job are one to one. The rows are split here,
not by Vertex: a batch job's BigQuery source must be a whole table (`bigquerySource.inputUri`
names a table; no query, no filter), so a bq:// fleet table cannot be split per segment
server-side. The table is read once and each segment's valid rows are written as JSONL under the
work folder, which is under the Cloud Storage mount (/gcs/... in a Vertex task; the component's
folder under the pipeline root), so the jobs read them as gs:// objects:

    <work>/instances/<model id>.jsonl   the model's features and a row key, one line a row
    <work>/outputs/<model id>/          the job's output prefix (Vertex adds prediction-<name>-<time>/)
    <work>/predictions.parquet, errors.parquet   the result, in the local twin's schema

Rows are validated here as the local twin validates them (same messages), so both platforms
send the same rows to the models. Each line carries a row key in `fleetops_row`, the job's
`instanceConfig.keyField`: Vertex leaves it out of what the model receives and writes it back as
`key` on each output line, which finds the row's instance columns again in whatever order the
output files come.

Jobs are submitted through the call layer (paced at `jobs_per_minute`: a fleet of 1,000
segments takes about 17 minutes to submit at Vertex's 60 a minute). A submit whose answer was
lost is looked up by its display name and its `fleetops-batch-input` label (a digest of its
input file) before a second job is created. The jobs run concurrently and are polled together,
one listing of the call's jobs (their `fleetops_batch_run` label) a poll, up to
`timeout_seconds`; one still running then is cancelled. A job that fails (or is cancelled) makes
its segment's rows errors naming the segment, the model version, the job and its error; the
other segments' predictions are kept.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from fleetops.batch import (
    BatchMachine,
    BatchResult,
    SegmentRows,
    check_feature_columns,
    error_rows,
    prediction_column,
    read_fleet_rows,
    route_rows,
    unparsed_rows,
    validate_rows,
    with_model_columns,
    write_fleet_outputs,
)
from fleetops.errors import PlatformError, UserError
from fleetops.names import LABEL_FLEET, label_value
from fleetops.spec import FleetSpec

if TYPE_CHECKING:
    from fleetops.platform.vertex import VertexPlatform

KEY_FIELD = "fleetops_row"
LABEL_BATCH_INPUT = "fleetops-batch-input"
LABEL_BATCH_RUN = "fleetops_batch_run"  # an underscore, not a hyphen: the key goes into list filters
POLL_SECONDS = 30.0
SUCCEEDED = "JOB_STATE_SUCCEEDED"
_FINAL_STATES = {SUCCEEDED, "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
UNKNOWN = 2  # google.rpc.Code
DEADLINE_EXCEEDED = 4
INTERNAL = 13


class PolledJob(Protocol):
    """What polling, cancelling and reporting need of a job (a segment's, or a single version's)."""

    name: str
    run_label: str
    state: str
    error: Any
    output_dir: str


@dataclass
class SingleJob:
    """A job of `submit_batch_job`: one version on a whole source."""

    name: str
    run_label: str
    state: str = ""
    error: Any = None
    output_dir: str = ""


@dataclass
class SegmentJob:
    """One segment's job: its rows, its files, and what became of it."""

    part: SegmentRows
    rows: pd.DataFrame  # the segment's valid rows, numeric features parsed (index: the row's key)
    input_uri: str
    output_prefix: str
    display_name: str
    input_label: str
    run_label: str  # shared by the jobs of one call: one listing polls them all
    name: str = ""  # the job's resource name, once created
    state: str = ""
    error: Any = None  # google.rpc.Status of a job that did not succeed
    output_dir: str = ""


def fleet_batch_predict(
    platform: VertexPlatform,
    spec: FleetSpec,
    source: str,
    work_dir: str | Path,
    version: str,
    machine: BatchMachine,
    poll_seconds: float = POLL_SECONDS,
) -> BatchResult:
    """Score every row of `source` with its segment's `version` in Vertex batch jobs; see the module docstring."""
    started = time.perf_counter()
    work = Path(work_dir)
    work_uri = _work_uri(work)
    frame, bad_lines = read_fleet_rows(spec, platform, source)
    check_feature_columns(spec.features.all, frame)
    if KEY_FIELD in spec.features.all:
        raise UserError(f"feature name {KEY_FIELD!r} is the row key of Vertex batch jobs; rename the feature")
    frame = frame.reset_index(drop=True)
    routed, error_frames = route_rows(spec, platform.registry, frame, version)
    error_frames.insert(0, unparsed_rows(frame, bad_lines))
    jobs = []
    run_label = hashlib.sha256(f"{work_uri}\n{time.time_ns()}".encode()).hexdigest()[:40]
    for part in routed:
        valid, invalid = validate_rows(spec.features.numeric, part.rows)
        error_frames.append(invalid)
        if len(valid):
            jobs.append(_write_instances(spec, part, valid, work, work_uri, run_label))
    for job in jobs:
        job.name = _submit(platform, spec, job, machine)
    _wait(platform, jobs, machine.timeout_seconds, poll_seconds)
    tables, failures = [], []
    for job in jobs:
        if job.state == SUCCEEDED:
            predictions, errors = _collect(job, frame)
            tables.append(predictions)
            error_frames.append(errors)
        else:
            failure = _failure(job)
            failures.append(failure)
            reason = {"code": failure["code"], "message": failure["error"]}
            error_frames.append(error_rows(frame.loc[job.rows.index], [reason] * len(job.rows)))
    rows = len(frame) + len(bad_lines)
    return write_fleet_outputs(work, tables, error_frames, rows, started, failures)


def _work_uri(work: Path) -> str:
    """The gs:// URI of the work folder: the jobs read and write there."""
    from fleetops.platform.vertex import gcs_uri

    uri = gcs_uri(work)
    if not uri.startswith("gs://"):
        raise UserError(
            f"Vertex batch prediction needs its work folder under the Cloud Storage mount (/gcs in a Vertex task; "
            f"FLEETOPS_GCS_MOUNT elsewhere) so its jobs can read their instances; {str(work)!r} is not"
        )
    return uri.rstrip("/")


def _write_instances(
    spec: FleetSpec, part: SegmentRows, valid: pd.DataFrame, work: Path, work_uri: str, run_label: str
) -> SegmentJob:
    """The segment's valid rows as JSONL instances (the features and the row key) under the work folder.

    Numbers go as numbers or null (missing: the model imputes it), categories as strings, a missing
    one as "" (what our container and the twin make of it, and what Vertex's prebuilt TensorFlow
    container takes; that container refuses a null number, so those rows come back as errors).
    """
    path = work / "instances" / f"{part.model_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: dict[str, list[Any]] = {KEY_FIELD: [int(i) for i in valid.index]}
    for name in spec.features.numeric:
        columns[name] = [None if np.isnan(v) else float(v) for v in valid[name].to_numpy(dtype="float64")]
    for name in spec.features.categorical:
        columns[name] = ["" if v is None or v != v else str(v) for v in valid[name]]
    names = list(columns)
    lines = (json.dumps(dict(zip(names, values, strict=True))) for values in zip(*columns.values(), strict=True))
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    input_uri = f"{work_uri}/instances/{path.name}"
    digest = hashlib.sha256(f"{input_uri}\n{text}".encode()).hexdigest()
    version = part.version
    return SegmentJob(
        part=part,
        rows=valid,
        input_uri=input_uri,
        output_prefix=f"{work_uri}/outputs/{part.model_id}",
        display_name=f"{part.model_id}-v{version.version_id}-batch-{digest[:8]}",
        input_label=digest[:40],
        run_label=run_label,
    )


def _job_client(platform: VertexPlatform) -> Any:
    """The SDK's JobService client, with the platform's endpoint and transport (`aiplatform.init`).

    The SDK's `BatchPredictionJob.submit` has no `instanceConfig` (the row key), so the job is
    built as the API's message and created with the client the SDK's job classes use.
    """
    from google.cloud.aiplatform import initializer, utils

    return initializer.global_config.create_client(
        client_class=utils.JobClientWithOverride,
        credentials=platform.credentials,
        location_override=platform.settings.region,
    )


def _parent(platform: VertexPlatform) -> str:
    return f"projects/{platform.settings.project}/locations/{platform.settings.region}"


def _job_request(platform: VertexPlatform, spec: FleetSpec, job: SegmentJob, machine: BatchMachine) -> Any:
    from google.cloud.aiplatform_v1 import types

    settings = platform.settings
    request = types.BatchPredictionJob(
        display_name=job.display_name,
        model=job.part.version.versioned_name,
        input_config=types.BatchPredictionJob.InputConfig(
            instances_format="jsonl", gcs_source=types.GcsSource(uris=[job.input_uri])
        ),
        instance_config=types.BatchPredictionJob.InstanceConfig(instance_type="object", key_field=KEY_FIELD),
        output_config=types.BatchPredictionJob.OutputConfig(
            predictions_format="jsonl", gcs_destination=types.GcsDestination(output_uri_prefix=job.output_prefix)
        ),
        dedicated_resources=types.BatchDedicatedResources(
            machine_spec=types.MachineSpec(machine_type=machine.machine_type),
            starting_replica_count=machine.starting_replica_count,
            max_replica_count=machine.max_replica_count,
        ),
        manual_batch_tuning_parameters=types.ManualBatchTuningParameters(batch_size=machine.batch_size),
        labels={
            **settings.labels,
            LABEL_FLEET: label_value(spec.name),
            LABEL_BATCH_INPUT: job.input_label,
            LABEL_BATCH_RUN: job.run_label,
        },
    )
    if settings.encryption_key:
        request.encryption_spec = types.EncryptionSpec(kms_key_name=settings.encryption_key)
    if settings.service_account:
        request.service_account = settings.service_account
    return request


def _submit(platform: VertexPlatform, spec: FleetSpec, job: SegmentJob, machine: BatchMachine) -> str:
    """Create the segment's job (paced as a job submission); a refused create that happened is found, not redone."""
    request = _job_request(platform, spec, job, machine)
    created = platform.calls.submit(
        f"batch prediction job for segment {job.part.segment!r} ({job.part.version.versioned_name})",
        lambda: _job_client(platform).create_batch_prediction_job(
            parent=_parent(platform), batch_prediction_job=request
        ),
        already_done=lambda: _created_job(platform, job.display_name, job.input_label),
    )
    return created.name


def _created_job(platform: VertexPlatform, display_name: str, input_label: str) -> Any:
    """The job named `display_name` with this input label (an attempt whose answer was lost created it), or None."""
    found = platform.calls.read(
        f"listing of the batch prediction jobs named {display_name!r}",
        lambda: list(
            _job_client(platform).list_batch_prediction_jobs(
                request={"parent": _parent(platform), "filter": f'display_name="{display_name}"'}
            )
        ),
    )
    return next(
        (j for j in found if j.display_name == display_name and j.labels.get(LABEL_BATCH_INPUT) == input_label),
        None,
    )


def _wait(platform: VertexPlatform, jobs: list[PolledJob], timeout_seconds: float, poll_seconds: float) -> None:
    """Poll the unfinished jobs together until all are final or the time is up; cancel the ones still running.

    Waits on the call layer's clock (a test's clock moves only when slept on).
    """
    calls = platform.calls
    deadline = calls.clock() + timeout_seconds
    pending = list(jobs)
    while pending:
        _refresh(platform, pending)
        pending = [job for job in pending if job.state not in _FINAL_STATES]
        if not pending:
            return
        if calls.clock() + poll_seconds > deadline:
            break
        calls.sleep(poll_seconds)
    for job in pending:
        _cancel(platform, job, timeout_seconds)


def _refresh(platform: VertexPlatform, pending: list[PolledJob]) -> None:
    """The jobs' states from one listing of the call's jobs (by their run label), not a read per job.

    A fleet of a thousand segments polled job by job every 30 s would read 2,000 times a minute,
    over the 600 a minute of Vertex's resource management quota; a listing is a read a page. A
    job the listing does not show yet (listings may lag a creation) is read on its own.
    """
    run = pending[0].run_label
    listed = platform.calls.read(
        f"listing of the batch prediction jobs labelled {LABEL_BATCH_RUN}={run}",
        lambda: list(
            _job_client(platform).list_batch_prediction_jobs(
                request={"parent": _parent(platform), "filter": f'labels.{LABEL_BATCH_RUN}="{run}"'}
            )
        ),
    )
    by_name = {found.name: found for found in listed}
    for job in pending:
        _update(job, by_name.get(job.name) or _read(platform, job))


def _read(platform: VertexPlatform, job: PolledJob) -> Any:
    return platform.calls.read(
        f"read of batch prediction job {job.name}",
        lambda: _job_client(platform).get_batch_prediction_job(name=job.name),
    )


def _update(job: PolledJob, found: Any) -> None:
    job.state = found.state.name
    job.error = found.error if job.state != SUCCEEDED else None
    job.output_dir = found.output_info.gcs_output_directory


def _cancel(platform: VertexPlatform, job: PolledJob, timeout_seconds: float) -> None:
    """Cancel a job that outlasted the timeout, so it stops costing; its rows become errors."""
    from google.api_core import exceptions

    message = f"still {job.state} after {timeout_seconds:g} s, so it was cancelled"
    try:
        platform.calls.write(
            f"cancellation of batch prediction job {job.name}",
            lambda: _job_client(platform).cancel_batch_prediction_job(name=job.name),
        )
    except (exceptions.GoogleAPICallError, PlatformError) as error:
        message = f"still {job.state} after {timeout_seconds:g} s; its cancellation failed too ({error})"
    job.state, job.error = "JOB_STATE_CANCELLED", _Status(DEADLINE_EXCEEDED, message)


@dataclass
class _Status:
    code: int
    message: str


def _failure(job: SegmentJob) -> dict[str, Any]:
    """What the errors and the summary say of a job that did not succeed."""
    error = job.error
    code = int(getattr(error, "code", 0) or INTERNAL)
    detail = getattr(error, "message", "") or "no error given"
    return {
        "segment": job.part.segment,
        "model": job.part.version.versioned_name,
        "job": job.name,
        "code": code,
        "error": (
            f"batch prediction job {job.name} for segment {job.part.segment!r} "
            f"(model {job.part.version.versioned_name}) ended {job.state}: {detail}"
        ),
    }


def _collect(job: SegmentJob, frame: pd.DataFrame) -> tuple[pa.Table, pd.DataFrame]:
    """The job's output lines as the local twin's tables: predictions (row order) and errors.

    Vertex names its JSONL files `predictions_0001.jsonl`, ... and `errors_0001.jsonl`, ... in
    the job's output directory (custom containers' jobs have also written
    `prediction.results-*`); a line with `error` is an error whatever its file is called. A sent row
    with no output line is an error too, so every row is accounted for.
    """
    predicted: dict[int, Any] = {}
    failed: dict[int, dict[str, Any]] = {}
    for path in _output_files(job.output_dir):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            result = json.loads(line)
            key = int(result["key"])
            if "error" in result:
                failed[key] = _rpc_status(result["error"])
            else:
                predicted[key] = result["prediction"]
    missing = [k for k in job.rows.index if k not in predicted and k not in failed]
    for key in missing:
        failed[key] = {"code": UNKNOWN, "message": f"batch prediction job {job.name} wrote no output for this row"}
    keys = sorted(predicted)
    rows = job.rows.loc[keys]
    schema = pa.Schema.from_pandas(job.rows, preserve_index=False)
    table = pa.Table.from_pandas(rows, schema=schema, preserve_index=False)
    table = table.append_column("prediction", _predictions([predicted[k] for k in keys]))
    error_keys = sorted(failed)
    errors = error_rows(frame.loc[error_keys], [failed[k] for k in error_keys])
    return with_model_columns(table, job.part.version), errors


def _output_files(output_dir: str) -> list[Path]:
    """The job's output files; none when it names no directory or the directory is not there (then every
    row it was sent is an error: "wrote no output")."""
    from fleetops.platform.vertex import gcs_local_path

    directory = Path(gcs_local_path(output_dir))
    if not output_dir.startswith("gs://") or not directory.is_dir():
        return []
    names = ("predictions_", "errors_", "prediction.results-")
    return sorted(p for p in directory.iterdir() if p.name.startswith(names) and "errors_stats" not in p.name)


def _predictions(values: list[dict[str, Any]]) -> pa.Array:
    """The `prediction` column from the serving container's answers ({classes, scores} or {value})."""
    if values and "value" in values[0]:
        return prediction_column(None, np.array([[v["value"]] for v in values], dtype="float64"))
    classes = values[0]["classes"] if values else []
    scores = np.array([v["scores"] for v in values], dtype="float64").reshape(len(values), len(classes))
    return prediction_column(classes, scores)


def _rpc_status(error: dict[str, Any]) -> dict[str, Any]:
    """{code, message} from an output line's error: a google.rpc.Status, or its code as an enum name."""
    code = error.get("code")
    if code is None and isinstance(error.get("status"), str):
        from google.rpc import code_pb2

        code = code_pb2.Code.Value(error["status"]) if error["status"] in code_pb2.Code.keys() else UNKNOWN
    return {"code": int(code if code is not None else UNKNOWN), "message": str(error.get("message", ""))}


# -- one version on a whole source (`Platform.batch_predict`) -------------------------------------


def submit_batch_job(
    platform: VertexPlatform, model_id: str, version: str, source: str, destination: str, machine: BatchMachine
) -> dict[str, Any]:
    """One version's BatchPredictionJob: bq:// or gs:// in, a BigQuery dataset or gs:// prefix out; waited on.

    Submitted without the SDK's own wait, so that a retried submit is only ever the create (and is
    looked up first, by its name and a label unique to this call) and the wait is ours: polled,
    up to `machine.timeout_seconds`, then cancelled. A job that does not succeed is a `PlatformError`.
    """
    from google.cloud import aiplatform

    registered = platform.registry.get_version(model_id, version)
    settings = platform.settings
    label = hashlib.sha256(f"{registered.versioned_name}\n{source}\n{destination}\n{time.time_ns()}".encode())
    job = SingleJob(name="", run_label=label.hexdigest()[:40])
    display_name = f"{model_id}-v{registered.version_id}-batch"
    submit = partial(
        aiplatform.BatchPredictionJob.submit,
        job_display_name=display_name,
        model_name=registered.versioned_name,
        machine_type=machine.machine_type,
        starting_replica_count=machine.starting_replica_count,
        max_replica_count=machine.max_replica_count,
        batch_size=machine.batch_size,
        labels={**settings.labels, LABEL_BATCH_INPUT: job.run_label, LABEL_BATCH_RUN: job.run_label},
        encryption_spec_key_name=settings.encryption_key,
        service_account=settings.service_account,
        project=settings.project,
        location=settings.region,
        credentials=platform.credentials,
        **_single_job_io(source, destination),
    )
    job.name = platform.calls.submit(
        f"batch prediction job for {registered.versioned_name}",
        lambda: submit().resource_name,
        already_done=lambda: getattr(_created_job(platform, display_name, job.run_label), "name", None),
    )
    _wait(platform, [job], machine.timeout_seconds, POLL_SECONDS)
    if job.state != SUCCEEDED:
        raise PlatformError(
            f"Vertex AI batch prediction job {job.name} for {registered.versioned_name} ended {job.state}: "
            f"{getattr(job.error, 'message', '') or 'no error given'}"
        )
    return {"job": job.name, "state": job.state, "model": registered.versioned_name}


def _single_job_io(source: str, destination: str) -> dict[str, str]:
    inputs: dict[str, str]
    if source.startswith("bq://"):
        inputs = {"bigquery_source": source, "instances_format": "bigquery"}
    elif source.startswith("gs://") and source.endswith((".csv", ".jsonl")):
        inputs = {"gcs_source": source, "instances_format": source.rsplit(".", 1)[-1]}
    else:
        raise UserError(
            f"Vertex batch prediction reads bq://project.dataset.table or gs://...csv|jsonl, not {source!r}"
        )
    if destination.startswith("bq://"):
        return inputs | {"bigquery_destination_prefix": destination, "predictions_format": "bigquery"}
    if destination.startswith("gs://"):
        return inputs | {"gcs_destination_prefix": destination, "predictions_format": "jsonl"}
    raise UserError(f"Vertex batch prediction writes to bq://project.dataset or gs://prefix, not {destination!r}")
