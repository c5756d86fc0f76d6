"""The platform seam: one URI, one object, the same interface on the local twin and on Vertex.

    local                         the local twin under $FLEETOPS_HOME or ./.fleetops
    local:///abs/path             the local twin under /abs/path
    vertex://PROJECT/REGION?staging_bucket=gs://my-bucket
                                  &service_account=runner@my-project.iam.gserviceaccount.com
                                  &encryption_key=projects/my-project/locations/us-central1/keyRings/r/cryptoKeys/k
                                  &network=projects/123456/global/networks/vpc&labels=team:growth,env:dev

Components receive the URI as a pipeline parameter and call `connect(uri)`;
they never branch on which platform they got.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pandas as pd

from fleetops.data.sources import BadLine
from fleetops.errors import UserError
from fleetops.platform.endpoints import Endpoints
from fleetops.platform.registry import ModelRegistry

if TYPE_CHECKING:  # monitoring and batch import the platform seam: only the annotations need their types
    from fleetops.batch import BatchMachine, BatchResult
    from fleetops.monitoring.jobs import EndpointReport
    from fleetops.spec import FleetSpec

DEFAULT_HOME = ".fleetops"
_VERTEX_SETTINGS = (
    "staging_bucket",
    "service_account",
    "encryption_key",
    "network",
    "labels",
    "pipeline_root",
    "api_endpoint",
    "bigquery_endpoint",
    "writes_per_minute",
    "jobs_per_minute",
    "credentials",
)

_RATE_SETTINGS = ("writes_per_minute", "jobs_per_minute")


@dataclass(frozen=True)
class VertexSettings:
    """Settings passed through to every Vertex job and resource."""

    project: str
    region: str
    staging_bucket: str | None = None
    service_account: str | None = None
    encryption_key: str | None = None
    network: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    pipeline_root: str | None = None
    # Another API endpoint (Private Service Connect, or a local server in tests); REST transport.
    api_endpoint: str | None = None
    # Another BigQuery endpoint (regional, Private Service Connect, or a local server in tests).
    bigquery_endpoint: str | None = None
    # Client-side pacing under Vertex's per-project, per-region request quotas
    # (https://cloud.google.com/vertex-ai/docs/quotas#request_quotas): "Resource management (CRUD)
    # requests" 600 a minute, "Job or long-running operation (LRO) submission requests" 60 a minute.
    # Lower them when other clients share the project's quota; see fleetops/platform/vertex/calls.py.
    writes_per_minute: float = 600.0
    jobs_per_minute: float = 60.0
    # `anonymous`: send no credentials, for an emulator or stand-in at `api_endpoint` (as the Cloud
    # Storage and BigQuery emulators are reached); unset, Application Default Credentials.
    credentials: str | None = None

    def resolved_pipeline_root(self) -> str:
        """`pipeline_root`, else `<staging_bucket>/pipeline_root`: where Vertex pipeline runs write."""
        if self.pipeline_root:
            return self.pipeline_root
        if self.staging_bucket:
            return f"{self.staging_bucket.rstrip('/')}/pipeline_root"
        raise UserError(
            "a Vertex pipeline needs a pipeline root: add ?pipeline_root=gs://... or ?staging_bucket=gs://..."
        )


@dataclass(frozen=True)
class PipelineRun:
    """A compiled pipeline (KFP YAML) and what one run of it is given."""

    template: Path
    parameters: dict[str, Any]
    display_name: str
    job_id: str | None = None  # Vertex's pipeline job id; None: the SDK makes one
    enable_caching: bool | None = None  # None: as compiled
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Submission:
    """What a platform did with a run or a schedule.

    `name`: the local run's folder, or the Vertex resource; `ok`: whether it succeeded (None: it runs on,
    remotely); `request`: what a dry run would have sent, instead of sending it; `detail`: the local
    run's record (tasks, outputs, log).
    """

    name: str
    ok: bool | None = None
    request: dict[str, Any] | None = None
    detail: Any = None


class Platform(ABC):
    """Everything the pipelines need from where they run, on the local twin and on Vertex alike.

    A registry and endpoints; tables; pipeline submission and schedules; batch prediction (one
    version, or a fleet); tuning and a work folder for scratch state; monitoring and its alerts.
    Code outside `fleetops/platform/` calls these and never asks which platform it has.
    """

    uri: str
    registry: ModelRegistry
    endpoints: Endpoints

    @abstractmethod
    def submit_pipeline(self, run: PipelineRun, *, dry_run: bool = False) -> Submission:
        """Start `run` where this platform runs pipelines.

        Local twin: now, on this machine, under kfp.local (in a child process; one line per finished
        task), returning when the run ends. Vertex: a PipelineJob that runs as the platform's service
        account on its network, not waited on. `dry_run`: nothing runs and nothing is sent; the
        submission carries the request instead.
        """

    @abstractmethod
    def schedule_pipeline(
        self,
        run: PipelineRun,
        *,
        cron: str | None = None,
        every_minutes: float | None = None,
        runs: int | None = None,
        dry_run: bool = False,
    ) -> Submission:
        """Run `run` on a schedule.

        Local twin: every `every_minutes` (from each start) in the foreground, `runs` times or until
        Ctrl-C; `ok` says whether every run succeeded. Vertex: a PipelineJobSchedule on `cron` (five
        fields), at most one run at a time. Each refuses the other's setting.
        """

    @abstractmethod
    def check_source(self, source: str) -> None:
        """Refuse a data source the pipeline's tasks could not read where this platform runs them."""

    @abstractmethod
    def read_table(self, source: str, bad_lines: list[BadLine] | None = None) -> pd.DataFrame:
        """Read a data reference (file, SQL query, bq:// table) into a DataFrame.

        A malformed CSV line fails the read, unless `bad_lines` is given: see `read_file`.
        """

    @property
    @abstractmethod
    def pipeline_root(self) -> str:
        """Where pipeline runs write their artifacts."""

    @abstractmethod
    def batch_predict(
        self,
        model_id: str,
        version: str,
        source: str,
        destination: str,
        *,
        machine_type: str = "n1-standard-4",
        starting_replica_count: int = 1,
        max_replica_count: int = 4,
        batch_size: int = 64,
    ) -> dict:
        """Score `source` with one registered version into `destination`; bad rows go to an errors output."""

    @abstractmethod
    def monitor(self, spec: FleetSpec, now: datetime | None = None) -> list[EndpointReport]:
        """Skew and drift of every endpoint of the fleet (labelled `fleet=<name>`): one report each.

        Local: the twin's request log, judged here (monitoring/jobs.py `monitor_fleet`) against each
        model's training statistics (skew) and the window before (drift), at `now` (default: the
        present). Vertex: each endpoint's ModelDeploymentMonitoringJob (created on first use with the
        spec's thresholds, sampling, interval and alert emails; reused after) and its latest results
        up to `now`, the distances as Vertex computed them (vertex/monitoring.py).
        """

    @abstractmethod
    def record_alerts(self, fleet: str, alerts: list[dict]) -> None:
        """Keep a monitoring run's alerts (already logged and sent to the webhook) where this platform keeps them.

        Local: appended to the twin's alert log (`<home>/monitoring.sqlite`). Vertex: nothing more, since
        the monitoring jobs email the spec's `alert_emails` and log their anomalies to Cloud Logging.
        """

    @abstractmethod
    def work_folder(self, purpose: str) -> Path:
        """A folder for a task's scratch state, named by `purpose` (a simple folder name, e.g. "tuning").

        The local twin: `<home>/<purpose>`, kept, so a rerun finds what the last run left there (a
        tuning study resumes). Vertex: a folder on the task's own disk, never under an output
        artifact or the Cloud Storage mount (SQLite is not safe on Cloud Storage FUSE, and whatever an
        artifact holds is uploaded with it); it goes with the task.
        """

    @abstractmethod
    def tune(self, spec: FleetSpec, dataset_path: str | Path, segment: str, log: Any = print) -> dict[str, Any]:
        """Tune one segment's hyperparameters on the split dataset; its tuning record.

        The record is `fleetops.tuning.local.TuningResult.to_dict()` and the spec's `scope`: the
        trials in Vertex's Trial shape, `metric`, `goal`, `best_parameters` (which the train step
        then trains the segment with) and `best_value`. The local twin runs an Optuna study in
        `work_folder("tuning")` whose trials are the trainer run as processes (a rerun resumes it).
        Vertex runs a HyperparameterTuningJob whose trials run the trainer in our image on the
        dataset's Cloud Storage object (`fleetops.tuning.vertex`).
        """


_WORK_PURPOSE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def check_work_purpose(purpose: str) -> str:
    """A work folder's purpose is one plain folder name: no path, no dots, nothing to escape the parent with."""
    if not isinstance(purpose, str) or not _WORK_PURPOSE.fullmatch(purpose):
        raise UserError(
            f"work folder purpose {purpose!r} must be a simple folder name: lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit, at most 63 characters (e.g. 'tuning')"
        )
    return purpose

    def fleet_batch_predict(
        self,
        spec: FleetSpec,
        source: str,
        work_dir: str | Path,
        version: str = "champion",
        machine: BatchMachine | None = None,
    ) -> BatchResult:
        """Score every row of `source` with its segment's model (`version`: an alias or id) of the fleet.

        Writes `predictions.parquet` (the instance columns, `prediction`, `model_id`, `version_id`)
        and `errors.parquet` (the instance columns, `errors` {code, message}) under `work_dir`, the
        same on every platform. Rows that cannot be scored (bad values, no segment, a segment
        without that version) are errors and never fail the call. The local twin loads each
        segment's model and scores here (`machine` does not apply). Vertex runs a
        BatchPredictionJob per segment on the registered version, concurrently, on `machine`
        (default `BatchMachine()`), with `work_dir` under the Cloud Storage mount for the jobs'
        inputs and outputs; a job that fails or outlasts `machine.timeout_seconds` makes its
        segment's rows errors, naming the job.
        """


def connect(uri: str = "local", credentials: object = None) -> Platform:
    """Resolve a platform URI (see the module docstring) to a `Platform`.

    `credentials` (Vertex only) defaults to Application Default Credentials.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise UserError(f"platform URI {uri!r} is empty; use 'local', 'local:///abs/path' or 'vertex://PROJECT/REGION'")
    if uri == "local" or uri.startswith("local:"):
        from fleetops.platform.local import LocalPlatform

        return LocalPlatform(local_home(uri))
    if uri.startswith("vertex://"):
        from fleetops.platform.vertex import VertexPlatform

        settings = vertex_settings(uri)
        if credentials is None and settings.credentials == "anonymous":
            from google.auth.credentials import AnonymousCredentials

            credentials = AnonymousCredentials()
        return VertexPlatform(settings, credentials=credentials)
    raise UserError(
        f"platform URI {uri!r} is not supported; use 'local', 'local:///abs/path' or 'vertex://PROJECT/REGION'"
    )


def local_home(uri: str) -> Path:
    """The home folder of a `local` / `local:///path` URI (made absolute)."""
    if uri == "local":
        return Path(os.environ.get("FLEETOPS_HOME", DEFAULT_HOME)).resolve()
    parts = urlsplit(uri)
    if parts.scheme != "local" or parts.netloc or not parts.path.startswith("/"):
        raise UserError(f"local platform URI {uri!r} must be 'local' or 'local:///absolute/path'")
    return Path(parts.path)


def local_uri(home: str | Path) -> str:
    """The `local:///abs/path` URI of a home folder: what a pipeline parameter should carry."""
    return f"local://{Path(home).resolve().as_posix()}"


def vertex_settings(uri: str) -> VertexSettings:
    """Parse and check a `vertex://` URI: every refusal happens here, before anything is sent to Google Cloud."""
    parts = urlsplit(uri)
    project, region = parts.netloc, parts.path.strip("/")
    if not project or not region or "/" in region:
        raise UserError(f"Vertex platform URI {uri!r} must look like vertex://PROJECT/REGION[?setting=value&...]")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(query) - set(_VERTEX_SETTINGS))
    if unknown:
        raise UserError(f"Vertex platform URI setting(s) {unknown} unknown; allowed: {list(_VERTEX_SETTINGS)}")
    labels: dict[str, str] = {}
    for pair in filter(None, query.pop("labels", "").split(",")):
        key, sep, value = pair.partition(":")
        if not sep:
            raise UserError(f"Vertex platform label {pair!r} must be key:value")
        labels[key] = value
    from fleetops.platform.registry import check_labels

    check_labels(labels)
    check_vertex_uri_values(project, region, query)
    if query.get("credentials", "anonymous") != "anonymous":
        raise UserError(
            f"credentials {query['credentials']!r} is not a choice: 'anonymous' (an emulator or stand-in at "
            "api_endpoint), or leave it out for Application Default Credentials"
        )
    rates = {name: _per_minute(name, query.pop(name)) for name in _RATE_SETTINGS if name in query}
    return VertexSettings(project=project, region=region, labels=labels, **query, **rates)


def _per_minute(name: str, value: str) -> float:
    """A request rate from the URI: a positive, finite number of requests a minute."""
    try:
        rate = float(value)
    except ValueError:
        rate = float("nan")
    if not 0 < rate < float("inf"):
        raise UserError(f"{name} {value!r} must be a positive number of requests per minute, e.g. 600")
    return rate


def check_vertex_uri_values(project: str, region: str, query: dict[str, str]) -> None:
    """Google Cloud's documented formats for the project, the region and the settings that have one."""
    from fleetops.platform import google_names

    google_names.check_project(project)
    google_names.check_region(region)
    for setting in ("staging_bucket", "pipeline_root"):
        if setting in query:
            google_names.check_gcs_uri(setting, query[setting])
    if "service_account" in query:
        google_names.check_service_account(query["service_account"])
    if "network" in query:
        google_names.check_network(query["network"])
    if "encryption_key" in query:
        google_names.check_kms_key(query["encryption_key"])
