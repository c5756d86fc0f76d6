"""The local twin: everything under one home folder.

<home>/registry.sqlite      the model registry (SQLite, WAL)
<home>/models/<id>/<ver>/   registered artifacts
<home>/warehouse.duckdb     tables addressed as bq://project.dataset.table
<home>/pipeline_root/       artifacts of local pipeline runs
<home>/<purpose>/           work folders (`work_folder`): tuning studies under <home>/tuning/
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd

from fleetops.data.sources import BadLine, parse_table, read_file, source_kind
from fleetops.errors import UserError
from fleetops.names import CHAMPION_ALIAS
from fleetops.platform import PipelineRun, Platform, Submission, check_work_purpose, local_uri
from fleetops.platform.local.endpoints import LocalEndpoints
from fleetops.platform.local.registry import LocalModelRegistry

if TYPE_CHECKING:
    from fleetops.batch import BatchMachine, BatchResult
    from fleetops.monitoring.jobs import EndpointReport
    from fleetops.spec import FleetSpec

# What the twin keeps under its home itself (registry artifacts, pipeline runs, cost runs): no work folder.
_OWN_FOLDERS = frozenset({"models", "pipeline_root", "runs"})


class LocalPlatform(Platform):
    def __init__(self, home: str | Path):
        self.home = Path(home).resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.uri = local_uri(self.home)
        self.registry = LocalModelRegistry(self.home)
        self.endpoints = LocalEndpoints(self.registry)
        self.warehouse = self.home / "warehouse.duckdb"

    @property
    def pipeline_root(self) -> str:
        return str(self.home / "pipeline_root")

    def submit_pipeline(self, run: PipelineRun, *, dry_run: bool = False) -> Submission:
        """Run it now under kfp.local, in `<home>/runs/<time>/` (the job id and labels have no local meaning)."""
        from fleetops.platform.local.pipeline_runs import run_compiled

        if dry_run:
            return Submission("(dry run)", request=self._local_request(run))
        local = run_compiled(run.template, run.parameters, self.home)
        return Submission(str(local.run_dir), ok=local.ok, detail=local)

    def schedule_pipeline(
        self,
        run: PipelineRun,
        *,
        cron: str | None = None,
        every_minutes: float | None = None,
        runs: int | None = None,
        dry_run: bool = False,
    ) -> Submission:
        from fleetops.platform.local.pipeline_runs import run_every

        if cron is not None:
            raise UserError(f"the local twin schedules every N minutes, not on cron {cron!r}: use --every-minutes N")
        if every_minutes is None or not every_minutes > 0:
            raise UserError(f"a local schedule needs every_minutes > 0 (--every-minutes N), not {every_minutes!r}")
        if dry_run:
            return Submission("(dry run)", request=self._local_request(run) | {"every_minutes": every_minutes})
        outcomes = run_every(run.template, run.parameters, self.home, every_minutes, runs)
        return Submission(str(self.home / "runs"), ok=all(outcomes), detail=outcomes)

    def _local_request(self, run: PipelineRun) -> dict[str, Any]:
        return {"runner": "kfp.local", "home": str(self.home), "template": str(run.template), **run.parameters}

    def check_source(self, source: str) -> None:
        """Files on this machine, SQL on the twin's warehouse and its bq:// tables; not Cloud Storage."""
        if source_kind(source) == "file" and source.startswith("gs://"):
            raise UserError(
                f"data source {source!r} is in Cloud Storage, which the local twin does not read: copy it to "
                "this machine, or load it into the twin's warehouse as a bq:// table"
            )

    def read_table(self, source: str, bad_lines: list[BadLine] | None = None) -> pd.DataFrame:
        kind = source_kind(source)
        if kind == "file":
            return read_file(source, bad_lines)
        with duckdb.connect(str(self.warehouse)) as conn:
            if kind == "table":
                ref = parse_table(source)
                query = f'SELECT * FROM "{ref.dataset}"."{ref.table}"'
            else:
                query = source
            try:
                return conn.execute(query).df()
            except duckdb.Error as exc:
                raise UserError(f"data source {source!r} failed in DuckDB: {exc}") from None

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
        """Locally the machine settings do not apply: the job runs here, writing Parquet under `destination`."""
        from fleetops.batch import batch_predict
        from fleetops.serving.predictor import Predictor

        registered = self.registry.get_version(model_id, version)
        predictor = Predictor.load(self.registry.artifact_path(registered), registered.artifact_sha256)
        bad_lines: list[BadLine] = []
        frame = self.read_table(source, bad_lines)
        result = batch_predict(predictor, frame, destination, bad_lines=bad_lines)
        return result.summary() | {"model": registered.versioned_name}

    def monitor(self, spec: FleetSpec, now: datetime | None = None) -> list[EndpointReport]:
        """The twin's request log, judged here: skew against each model's training statistics, drift
        against the window before."""
        from fleetops.monitoring.jobs import monitor_fleet

        return monitor_fleet(spec, self, self.home, now)

    def record_alerts(self, fleet: str, alerts: list[dict]) -> None:
        """The twin's alert log, `<home>/monitoring.sqlite` (read with `read_alerts`)."""
        from fleetops.monitoring.alerts import record_alerts

        record_alerts(self.home, fleet, alerts)

    def work_folder(self, purpose: str) -> Path:
        """`<home>/<purpose>`, kept between runs; the twin's own folders are not handed out."""
        if check_work_purpose(purpose) in _OWN_FOLDERS:
            raise UserError(
                f"work folder purpose {purpose!r} names a folder the local twin keeps its own data in; "
                f"not one of {sorted(_OWN_FOLDERS)}"
            )
        folder = self.home / purpose
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def tune(self, spec: FleetSpec, dataset_path: str | Path, segment: str, log: Any = print) -> dict[str, Any]:
        """An Optuna study under `work_folder("tuning")`: a rerun resumes it without repeating finished trials."""
        from fleetops.tuning.local import tune_in_folder

        return tune_in_folder(spec, dataset_path, segment, self.work_folder("tuning"), log)

    def fleet_batch_predict(
        self,
        spec: FleetSpec,
        source: str,
        work_dir: str | Path,
        version: str = CHAMPION_ALIAS,
        machine: BatchMachine | None = None,
    ) -> BatchResult:
        """In process, here: `machine` does not apply."""
        from fleetops.batch import fleet_batch_predict_in_process

        return fleet_batch_predict_in_process(spec, self, source, work_dir, version)

    def write_table(self, df: pd.DataFrame, table: str) -> None:
        """Create or replace a `bq://project.dataset.table` of the local twin (the project is not used)."""
        ref = parse_table(table)
        with duckdb.connect(str(self.warehouse)) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{ref.dataset}"')
            conn.register("frame", df)
            conn.execute(f'CREATE OR REPLACE TABLE "{ref.dataset}"."{ref.table}" AS SELECT * FROM frame')
