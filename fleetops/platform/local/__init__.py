"""The local twin: everything under one home folder.

<home>/registry.sqlite      the model registry (SQLite, WAL)
<home>/models/<id>/<ver>/   registered artifacts
<home>/warehouse.duckdb     tables addressed as bq://project.dataset.table
<home>/pipeline_root/       artifacts of local pipeline runs
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pandas as pd

from fleetops.data.sources import BadLine, parse_table, read_file, source_kind
from fleetops.errors import UserError
from fleetops.names import CHAMPION_ALIAS
from fleetops.platform import Platform, local_uri
from fleetops.platform.local.endpoints import LocalEndpoints
from fleetops.platform.local.registry import LocalModelRegistry

if TYPE_CHECKING:
    from fleetops.batch import BatchMachine, BatchResult
    from fleetops.spec import FleetSpec


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
