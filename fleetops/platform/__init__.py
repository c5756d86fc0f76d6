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
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pandas as pd

from fleetops.data.sources import BadLine
from fleetops.errors import UserError
from fleetops.platform.endpoints import Endpoints
from fleetops.platform.registry import ModelRegistry

if TYPE_CHECKING:
    from fleetops.batch import BatchMachine, BatchResult
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

    def resolved_pipeline_root(self) -> str:
        """`pipeline_root`, else `<staging_bucket>/pipeline_root`: where Vertex pipeline runs write."""
        if self.pipeline_root:
            return self.pipeline_root
        if self.staging_bucket:
            return f"{self.staging_bucket.rstrip('/')}/pipeline_root"
        raise UserError(
            "a Vertex pipeline needs a pipeline root: add ?pipeline_root=gs://... or ?staging_bucket=gs://..."
        )


class Platform(ABC):
    """What components need from where they run: a registry, endpoints, data access, a pipeline root."""

    uri: str
    registry: ModelRegistry
    endpoints: Endpoints

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

        return VertexPlatform(vertex_settings(uri), credentials=credentials)
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
