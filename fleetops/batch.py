"""Batch prediction: a table in, predictions and errors out, for one model or a whole fleet.

Rows are validated column-wise (vectorised): a row with a non-numeric value in
a numeric feature, or one beyond float32 (the models' input type, where it
would turn into inf), goes to the errors output with `{code, message}` and
never fails the job, as in Vertex batch prediction. Valid rows are scored in
large chunks straight into the model's input tensors. A row the model still
scores as NaN or inf is an error too: no prediction carries a non-finite score.
Predictions are the instance columns plus `prediction` (a struct: `classes` and
`scores`, or `value`), written as Parquet.

For a fleet, each row goes to its segment's model (by default the `champion`
alias); rows whose segment has no such model are errors too. So are the lines
of a CSV source that do not parse (more or fewer fields than the header): their
instance columns are null and the message gives the line number and its text.
Where a fleet's rows are scored is the platform's `fleet_batch_predict`: here,
in process, on the local twin (`fleet_batch_predict_in_process`); in a
BatchPredictionJob per segment on Vertex (fleetops/platform/vertex/batch.py),
which shares the routing, the validation and the output schema defined here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fleetops.data.sources import BadLine
from fleetops.data.validation import segment_values
from fleetops.errors import NotFoundError, UserError
from fleetops.names import CHAMPION_ALIAS, model_id
from fleetops.platform import Platform
from fleetops.platform.registry import ModelRegistry, ModelVersion
from fleetops.serving.predictor import FLOAT32_MAX, Predictor, bucket_size
from fleetops.spec import FleetSpec

CHUNK_ROWS = 131_072
INVALID_ARGUMENT = 3  # google.rpc.Code
NOT_FOUND = 5
_FLOAT32_RANGE = f"must be a number from {-FLOAT32_MAX:.8g} to {FLOAT32_MAX:.8g} (the model's inputs are float32)"
_NOT_FINITE = (
    "the model's score for this row is not a finite number (its numeric values are probably too extreme for the model)"
)


@dataclass(frozen=True)
class BatchMachine:
    """What each of a platform's batch jobs runs on (Vertex: per job; the local twin scores in process)."""

    machine_type: str = "n1-standard-4"
    starting_replica_count: int = 1
    max_replica_count: int = 4
    batch_size: int = 64
    timeout_seconds: float = 24 * 3600  # a job still running then is cancelled, its rows errors

    def __post_init__(self) -> None:
        for name in ("starting_replica_count", "max_replica_count", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"{name} {value!r} must be a whole number of at least 1")
        if self.max_replica_count < self.starting_replica_count:
            raise UserError(
                f"max_replica_count {self.max_replica_count} must be at least "
                f"starting_replica_count {self.starting_replica_count}"
            )
        if not self.timeout_seconds > 0:
            raise UserError(f"timeout_seconds {self.timeout_seconds!r} must be a positive number of seconds")


@dataclass
class BatchResult:
    rows: int
    predicted: int
    errors: int
    predictions_path: Path
    errors_path: Path
    seconds: float
    # Jobs that failed as a whole (Vertex): {segment, model, job, error}; their rows are in the errors.
    failures: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        failed = {"failures": self.failures} if self.failures else {}
        return {
            "rows": self.rows,
            "predicted": self.predicted,
            "errors": self.errors,
            "predictions": str(self.predictions_path),
            "errors_path": str(self.errors_path),
            "seconds": round(self.seconds, 3),
        } | failed


def predict_frame(
    predictor: Predictor, frame: pd.DataFrame, chunk_rows: int = CHUNK_ROWS
) -> tuple[pa.Table, pd.DataFrame]:
    """Score `frame`: (predictions table, errors frame). Missing feature columns fail the job up front."""
    chunks, errors = scored_chunks(predictor, frame, chunk_rows)
    tables, error_frames = [], [errors]
    for table, unscored in chunks:
        tables.append(table)
        error_frames.append(unscored)
    predictions = pa.concat_tables(tables) if tables else _empty_predictions(predictor, frame)
    return predictions, pd.concat(error_frames, ignore_index=True)


def scored_chunks(
    predictor: Predictor, frame: pd.DataFrame, chunk_rows: int = CHUNK_ROWS
) -> tuple[Iterator[tuple[pa.Table, pd.DataFrame]], pd.DataFrame]:
    """Validate all rows at once (vectorised); return the scored chunks (lazily) and the invalid rows.

    Each chunk comes with the rows of it the model scored as NaN or inf (not in its table).
    """
    check_feature_columns(predictor.features, frame)
    frame = frame.reset_index(drop=True)
    typed, errors = validate_rows(predictor.numeric, frame)
    # The output schema is decided once from all the valid rows: inferred per chunk, a column
    # missing throughout one chunk would come out `null` there, and a Parquet file takes one schema.
    schema = pa.Schema.from_pandas(typed, preserve_index=False)

    def chunks() -> Iterator[tuple[pa.Table, pd.DataFrame]]:
        for start in range(0, len(typed), chunk_rows):
            scored = typed.iloc[start : start + chunk_rows]
            scores = _score(predictor, _input_tensors(predictor, scored))
            # In-range inputs can still overflow inside a model (or a model can be broken): one
            # vectorised check per chunk keeps NaN and inf out of the predictions.
            finite = np.isfinite(scores).all(axis=1)
            unscored = frame.iloc[:0]
            if not finite.all():
                unscored = frame.loc[scored.index[~finite]]
                scored, scores = scored[finite], scores[finite]
            table = pa.Table.from_pandas(scored, schema=schema, preserve_index=False)
            table = table.append_column("prediction", _prediction_column(predictor, scores))
            yield table, error_rows(unscored, [{"code": INVALID_ARGUMENT, "message": _NOT_FINITE}] * len(unscored))

    return chunks(), errors


def check_feature_columns(features: Sequence[str], frame: pd.DataFrame) -> None:
    """Missing feature columns fail the job up front."""
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise UserError(f"the batch source lacks feature column(s) {missing}; the model needs {list(features)}")


def validate_rows(numeric_features: Sequence[str], frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check all rows at once (vectorised): (valid rows with their numeric features parsed, error rows).

    The valid rows keep their index labels (unique in `frame`), so they can be found again in it.
    """
    bad = np.zeros(len(frame), dtype=bool)
    reasons = np.full(len(frame), "", dtype=object)
    numeric = {}
    for name in numeric_features:
        column = frame[name]
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        not_number = (column.notna().to_numpy() & np.isnan(values)) | np.isinf(values)
        # Finite as float64 but not as float32: the cast to the model's input would make it inf.
        out_of_range = (np.abs(values) > FLOAT32_MAX) & ~not_number
        for wrong, rule in ((not_number, "must be a number"), (out_of_range, _FLOAT32_RANGE)):
            fresh = wrong & ~bad
            reasons[fresh] = [f"feature {name!r} {rule}, got {v!r:.60}" for v in column[fresh]]
            bad |= wrong
        numeric[name] = values
    errors = error_rows(frame[bad], [{"code": INVALID_ARGUMENT, "message": r} for r in reasons[bad]])
    return frame.assign(**numeric).iloc[np.flatnonzero(~bad)], errors


def batch_predict(
    predictor: Predictor,
    frame: pd.DataFrame,
    output_dir: str | Path,
    chunk_rows: int = CHUNK_ROWS,
    bad_lines: Sequence[BadLine] = (),
) -> BatchResult:
    """Score a frame with one model; write `predictions.parquet` and `errors.parquet` under `output_dir`.

    `bad_lines` are the lines of the CSV source `frame` was read from that did not parse: errors too.

    Chunk i is written by a writer thread while chunk i+1 is scored: the Parquet writer and
    TensorFlow both release the GIL, so on two cores the write mostly hides behind the scoring.
    """
    started = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    chunks, errors = scored_chunks(predictor, frame, chunk_rows)
    predictions_path, errors_path = output_dir / "predictions.parquet", output_dir / "errors.parquet"
    predicted, error_frames = 0, [unparsed_rows(frame, bad_lines), errors]
    writer: pq.ParquetWriter | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet") as pool:
        pending: Future[None] | None = None
        try:
            for table, unscored in chunks:
                error_frames.append(unscored)
                if writer is None:
                    writer = pq.ParquetWriter(predictions_path, table.schema)
                if pending is not None:
                    pending.result()
                pending = pool.submit(writer.write_table, table)
                predicted += table.num_rows
            if pending is not None:
                pending.result()
        finally:
            if writer is not None:
                writer.close()
    if writer is None:
        pq.write_table(_empty_predictions(predictor, frame), predictions_path)
    errors = pd.concat(error_frames, ignore_index=True)
    errors.to_parquet(errors_path, index=False)
    rows = len(frame) + len(bad_lines)
    return BatchResult(rows, predicted, len(errors), predictions_path, errors_path, time.perf_counter() - started)


@dataclass
class SegmentRows:
    """The rows of one segment and the registered version that scores them."""

    segment: str
    model_id: str
    version: ModelVersion
    rows: pd.DataFrame


def fleet_batch_predict(
    spec: FleetSpec, platform: Platform, source: str, output_dir: str | Path, version: str = CHAMPION_ALIAS
) -> BatchResult:
    """Score every row of `source` with its segment's model (`version`: an alias or id) of the fleet.

    Where the scoring happens is the platform's business: see `Platform.fleet_batch_predict`.
    """
    return platform.fleet_batch_predict(spec, source, output_dir, version)


def fleet_batch_predict_in_process(
    spec: FleetSpec, platform: Platform, source: str, output_dir: str | Path, version: str = CHAMPION_ALIAS
) -> BatchResult:
    """Score the fleet's rows here: each segment's model is loaded from the registry and scores its rows."""
    started = time.perf_counter()
    frame, bad_lines = read_fleet_rows(spec, platform, source)
    routed, error_frames = route_rows(spec, platform.registry, frame, version)
    tables = []
    for part in routed:
        predictor = Predictor.load(platform.registry.artifact_path(part.version), part.version.artifact_sha256)
        predictions, errors = predict_frame(predictor, part.rows)
        tables.append(with_model_columns(predictions, part.version))
        error_frames.append(errors)
    error_frames.insert(0, unparsed_rows(frame, bad_lines))
    return write_fleet_outputs(Path(output_dir), tables, error_frames, len(frame) + len(bad_lines), started)


def read_fleet_rows(spec: FleetSpec, platform: Platform, source: str) -> tuple[pd.DataFrame, list[BadLine]]:
    """The source's rows (and its CSV lines that did not parse); it must have the segment column."""
    bad_lines: list[BadLine] = []
    frame = platform.read_table(source, bad_lines)
    if spec.data.segment_column and spec.data.segment_column not in frame.columns:
        raise UserError(f"the batch source lacks the segment column {spec.data.segment_column!r}")
    return frame, bad_lines


def route_rows(
    spec: FleetSpec, registry: ModelRegistry, frame: pd.DataFrame, version: str
) -> tuple[list[SegmentRows], list[pd.DataFrame]]:
    """Group the rows by segment, in segment order, with the version that scores each group.

    Rows without a segment value, or whose segment has no such version, are errors (NOT_FOUND).
    """
    routed, error_frames = [], []
    for segment, rows in frame.groupby(segment_values(frame, spec), sort=True, dropna=False):
        mid = model_id(spec.name, str(segment)) if pd.notna(segment) else None
        try:
            if mid is None:
                raise NotFoundError(f"the row has no {spec.data.segment_column!r} value, so no model can score it")
            routed.append(SegmentRows(str(segment), mid, registry.get_version(mid, version), rows))
        except NotFoundError as exc:
            error_frames.append(error_rows(rows, [{"code": NOT_FOUND, "message": str(exc)}] * len(rows)))
    return routed, error_frames


def with_model_columns(predictions: pa.Table, version: ModelVersion) -> pa.Table:
    """`model_id` and `version_id` appended: which model scored each row."""
    n = predictions.num_rows
    predictions = predictions.append_column("model_id", pa.array([version.model_id] * n, pa.string()))
    return predictions.append_column("version_id", pa.array([version.version_id] * n, pa.string()))


def error_rows(rows: pd.DataFrame, reasons: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows that were not scored, with `errors`; mixed-type columns become text so the bad value stays visible."""
    errors = rows.copy()
    for name in [c for c in errors.columns if pd.api.types.is_object_dtype(errors[c])]:
        errors[name] = errors[name].map(lambda v: None if v is None or v != v else str(v))
    errors["errors"] = reasons
    return errors


def unparsed_rows(frame: pd.DataFrame, bad_lines: Sequence[BadLine]) -> pd.DataFrame:
    """Error rows for CSV lines that did not parse: no instance values, the line in the message."""
    # Columns of None (object) leave the other error rows' values as they are when concatenated; an
    # empty frame of the source's types leaves them their types too (empty object columns would not).
    rows = pd.DataFrame(None, index=range(len(bad_lines)), columns=frame.columns, dtype=object)
    rows = rows if bad_lines else frame.iloc[:0]
    return error_rows(rows, [{"code": INVALID_ARGUMENT, "message": bad.describe()} for bad in bad_lines])


def _input_tensors(predictor: Predictor, rows: pd.DataFrame) -> dict[str, Any]:
    """The model's named inputs for rows whose numeric features are already parsed.

    Numpy arrays for a LiteRT predictor (its interpreter takes them as they are), tensors for Keras.
    """
    inputs = {name: rows[name].to_numpy("float32").reshape(-1, 1) for name in predictor.numeric}
    for name in predictor.categorical:
        column = rows[name]
        inputs[name] = column.where(column.notna(), "").astype(str).to_numpy(dtype=object).reshape(-1, 1)
    if predictor.lite is not None:
        return inputs
    import tensorflow as tf

    return {name: tf.constant(values) for name, values in inputs.items()}


def _empty_predictions(predictor: Predictor, frame: pd.DataFrame) -> pa.Table:
    table = pa.Table.from_pandas(frame.iloc[:0], preserve_index=False)
    return table.append_column(
        "prediction", _prediction_column(predictor, np.zeros((0, max(len(predictor.classes), 1))))
    )


def _score(predictor: Predictor, inputs: dict[str, Any]) -> np.ndarray:
    """Score a chunk; for Keras padded to a bucket size so the model is traced for few shapes (chunks are few)."""
    n = int(next(iter(inputs.values())).shape[0])
    size = n if predictor.lite is not None else bucket_size(n)  # LiteRT traces nothing: no padding
    if size != n:
        import tensorflow as tf

        inputs = {k: tf.concat([t, tf.repeat(t[:1], size - n, axis=0)], axis=0) for k, t in inputs.items()}
    scores = predictor.score_tensors(inputs)[:n]
    return scores.reshape(-1, 1) if predictor.task == "regression" else scores


def _prediction_column(predictor: Predictor, scores: np.ndarray) -> pa.Array:
    return prediction_column(None if predictor.task == "regression" else predictor.classes, scores)


def prediction_column(classes: Sequence[str] | None, scores: np.ndarray) -> pa.Array:
    """The `prediction` struct column, built column-wise (no per-row Python objects).

    `classes` None: a regression, `scores` (n, 1) values; else (n, k) class scores.
    """
    n = scores.shape[0]
    if classes is None:
        return pa.StructArray.from_arrays([pa.array(scores.reshape(-1), pa.float64())], names=["value"])
    k = len(classes)
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    # The class names repeat on every row: dictionary-encoded, they cost an index each.
    names = pa.DictionaryArray.from_arrays(
        pa.array(np.tile(np.arange(k, dtype=np.int32), n)), pa.array(list(classes), pa.string())
    )
    labels = pa.ListArray.from_arrays(offsets, names)
    values = pa.ListArray.from_arrays(offsets, pa.array(scores.astype("float64").reshape(-1), pa.float64()))
    return pa.StructArray.from_arrays([labels, values], names=["classes", "scores"])


def write_fleet_outputs(
    output_dir: Path,
    tables: list[pa.Table],
    error_frames: list[pd.DataFrame],
    rows: int,
    started: float,
    failures: Sequence[dict[str, Any]] = (),
) -> BatchResult:
    """`predictions.parquet` (the tables, one schema) and `errors.parquet` under `output_dir`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    predictions_path, errors_path = output_dir / "predictions.parquet", output_dir / "errors.parquet"
    tables = [t for t in tables if t.num_rows] or tables[:1]
    predicted = sum(t.num_rows for t in tables)
    if tables:
        pq.write_table(pa.concat_tables(tables, promote_options="permissive"), predictions_path)
    else:
        pq.write_table(pa.table({"prediction": pa.array([], pa.null())}), predictions_path)
    errors = pd.concat(error_frames, ignore_index=True) if error_frames else pd.DataFrame({"errors": []})
    errors.to_parquet(errors_path, index=False)
    seconds = time.perf_counter() - started
    return BatchResult(rows, predicted, len(errors), predictions_path, errors_path, seconds, list(failures))
