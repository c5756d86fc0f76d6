"""The Vertex AI platform: google-cloud-aiplatform for the registry, BigQuery for data.

`aiplatform.init` is the SDK's own way to carry project, region, credentials,
staging bucket, CMEK key and service account to every call; it is called once
here, when a component connects. It is also the only way to give the SDK's
resource classes an API endpoint and a transport (see calls.py); project,
region and credentials are passed to each call as well.

Every Vertex request goes through `self.calls` (calls.py): paced per quota,
retried on 429/503/504, its errors made ours. The registry and the endpoints
share it, so one platform's threads share one pacing.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from fleetops.data.sources import BadLine, parse_table, read_file, source_kind
from fleetops.errors import UserError
from fleetops.names import CHAMPION_ALIAS
from fleetops.platform import PipelineRun, Platform, Submission, VertexSettings, check_work_purpose
from fleetops.platform.vertex.calls import VertexCalls
from fleetops.platform.vertex.endpoints import VertexEndpoints
from fleetops.platform.vertex.registry import VertexModelRegistry

if TYPE_CHECKING:
    from fleetops.batch import BatchMachine, BatchResult
    from fleetops.monitoring.jobs import EndpointReport
    from fleetops.spec import FleetSpec


class VertexPlatform(Platform):
    def __init__(self, settings: VertexSettings, credentials: Any = None, calls: VertexCalls | None = None):
        from google.cloud import aiplatform

        self.settings = settings
        self.credentials = credentials
        self.calls = calls or VertexCalls(settings)
        self._work_folders: dict[str, Path] = {}
        self.uri = f"vertex://{settings.project}/{settings.region}"
        init_kwargs: dict[str, Any] = {
            "project": settings.project,
            "location": settings.region,
            "credentials": credentials,
            "staging_bucket": settings.staging_bucket,
            "encryption_spec_key_name": settings.encryption_key,
            "service_account": settings.service_account,
            "network": settings.network,
        }
        if settings.api_endpoint:
            init_kwargs |= {"api_endpoint": settings.api_endpoint, "api_transport": "rest"}
        # aiplatform.init only sets what it is given: a key, account, network or endpoint of a platform
        # connected before would stay in the SDK's global config. The SDK has no reset; its config's
        # constructor is one (every field None), so this platform's settings are the only ones in force.
        from google.cloud.aiplatform import initializer

        initializer.global_config.__init__()
        aiplatform.init(**{k: v for k, v in init_kwargs.items() if v is not None})
        self.registry = VertexModelRegistry(settings, credentials, self.calls)
        self.endpoints = VertexEndpoints(settings, credentials, self.registry)

    @property
    def pipeline_root(self) -> str:
        return self.settings.resolved_pipeline_root()

    def submit_pipeline(self, run: PipelineRun, *, dry_run: bool = False) -> Submission:
        from fleetops.platform.vertex.pipeline_jobs import submit

        return submit(self, run, dry_run)

    def schedule_pipeline(
        self,
        run: PipelineRun,
        *,
        cron: str | None = None,
        every_minutes: float | None = None,
        runs: int | None = None,
        dry_run: bool = False,
    ) -> Submission:
        from fleetops.platform.vertex.pipeline_jobs import schedule

        if runs is not None:
            raise UserError(f"a Vertex schedule runs until paused or deleted; runs={runs!r} is for the local twin")
        return schedule(self, run, cron, every_minutes, dry_run)

    def check_source(self, source: str) -> None:
        """Vertex tasks read Cloud Storage (gs://), BigQuery (bq://, SQL), not a file on this machine."""
        if source_kind(source) == "file" and not source.startswith("gs://"):
            raise UserError(f"data source {source!r} is a file on this machine; on Vertex use gs://, bq:// or SQL")

    def read_table(self, source: str, bad_lines: list[BadLine] | None = None) -> pd.DataFrame:
        kind = source_kind(source)
        if kind == "file":
            return read_file(gcs_local_path(source), bad_lines)
        from google.api_core import exceptions

        try:
            return self.bigquery_job(source).to_dataframe()
        except (exceptions.BadRequest, exceptions.NotFound) as exc:
            raise UserError(f"data source {source!r} failed in BigQuery: {exc.message}") from None

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
        """A Vertex BatchPredictionJob: bq:// or gs:// in, a BigQuery dataset or gs:// prefix out; waited on.

        See fleetops/platform/vertex/batch.py (`submit_batch_job`)."""
        from fleetops.batch import BatchMachine
        from fleetops.platform.vertex import batch

        machine = BatchMachine(machine_type, starting_replica_count, max_replica_count, batch_size)
        return batch.submit_batch_job(self, model_id, version, source, destination, machine)

    def fleet_batch_predict(
        self,
        spec: FleetSpec,
        source: str,
        work_dir: str | Path,
        version: str = CHAMPION_ALIAS,
        machine: BatchMachine | None = None,
    ) -> BatchResult:
        """A BatchPredictionJob per segment, its instances and outputs under `work_dir` (on the Cloud
        Storage mount); see fleetops/platform/vertex/batch.py."""
        from fleetops.batch import BatchMachine
        from fleetops.platform.vertex import batch

        return batch.fleet_batch_predict(self, spec, source, work_dir, version, machine or BatchMachine())

    def monitor(self, spec: FleetSpec, now: datetime | None = None) -> list[EndpointReport]:
        """Each fleet endpoint's ModelDeploymentMonitoringJob (created once, then reused) and its latest
        skew and drift results up to `now`, as Vertex computed them (see monitoring.py)."""
        from fleetops.platform.vertex.monitoring import monitor_fleet

        return monitor_fleet(spec, self, now)

    def record_alerts(self, fleet: str, alerts: list[dict]) -> None:
        """Nothing to add: the monitoring jobs email the spec's `alert_emails` and log to Cloud Logging, and the
        run has printed each alert as a structured log line (which Cloud Logging ingests from the task)."""

    def work_folder(self, purpose: str) -> Path:
        """A folder on the task's own disk, made once per purpose for this platform object: never under the
        Cloud Storage mount, where an output artifact lives (SQLite is not safe on FUSE, and an artifact's
        contents are uploaded). A Vertex task is a fresh container, so nothing carries over to a rerun."""
        check_work_purpose(purpose)
        if purpose not in self._work_folders:
            self._work_folders[purpose] = Path(tempfile.mkdtemp(prefix=f"fleetops-{purpose}-"))
        return self._work_folders[purpose]

    def tune(self, spec: FleetSpec, dataset_path: str | Path, segment: str, log: Any = print) -> dict[str, Any]:
        """A HyperparameterTuningJob whose trials run the trainer in our image on the dataset's gs:// object."""
        from fleetops.tuning.vertex import tune_on_vertex

        return tune_on_vertex(spec, self, dataset_path, segment, log)

    def bigquery_job(self, source: str) -> Any:
        """Run a SQL query or read a bq:// table as a BigQuery query job, labelled like every job."""
        from google.cloud import bigquery

        query = source if source_kind(source) == "sql" else f"SELECT * FROM `{parse_table(source).bigquery_id}`"
        options = {"api_endpoint": self.settings.bigquery_endpoint} if self.settings.bigquery_endpoint else None
        client = bigquery.Client(project=self.settings.project, credentials=self.credentials, client_options=options)
        config = bigquery_query_config(self.settings)
        return client.query(query, job_config=config).result()


def bigquery_query_config(settings: VertexSettings) -> Any:
    from google.cloud import bigquery

    config = bigquery.QueryJobConfig(labels=dict(settings.labels))
    if settings.encryption_key:
        config.destination_encryption_configuration = bigquery.EncryptionConfiguration(
            kms_key_name=settings.encryption_key
        )
    return config


def gcs_mount() -> Path:
    """Where Cloud Storage is mounted: /gcs in a Vertex task (Cloud Storage FUSE); `FLEETOPS_GCS_MOUNT` names
    another folder that stands in for it (a pipeline run with kfp.local against a Vertex stand-in)."""
    return Path(os.environ.get("FLEETOPS_GCS_MOUNT", "/gcs"))


def gcs_local_path(uri: str) -> str:
    """Vertex mounts Cloud Storage at /gcs (Cloud Storage FUSE): gs://b/x is readable at /gcs/b/x."""
    return str(gcs_mount() / uri.removeprefix("gs://")) if uri.startswith("gs://") else uri


def gcs_uri(path: str | Path) -> str:
    """The gs:// URI of a path under the Cloud Storage mount (a KFP artifact's local path in a Vertex task);
    a gs:// URI or a path elsewhere is returned as it is."""
    text = str(path)
    if text.startswith("gs://"):
        return text
    try:
        relative = Path(text).resolve().relative_to(gcs_mount().resolve())
    except ValueError:
        return text
    return f"gs://{relative.as_posix()}"
