"""Train fleet members: one entry point for pipelines, tuning trials and Vertex custom jobs.

`train_shard` trains every segment of a shard in one process (TensorFlow is
imported once per shard, not once per model). For each segment it trains each
architecture of the spec, keeps the best on the validation split, and writes
a model artifact directory. Run as a module it trains one segment with
hyperparameters given as command-line flags:

    python -m fleetops.training.trainer --spec fleet.yaml --data dataset.parquet \
        --segment north --architecture dnn --output-dir out/ --learning-rate 0.003
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fleetops.data.split import SPLIT_COLUMN, TRAIN, VALIDATION
from fleetops.data.validation import coerce_features, statistics
from fleetops.errors import UserError
from fleetops.evaluation.metrics import classification_metrics, regression_metrics
from fleetops.fingerprints import frame_sha256
from fleetops.names import segment_slug
from fleetops.spec import Architecture, FleetSpec, Task, TrainingSpec, load_spec

SEGMENT_COLUMN = "__segment"


@dataclass
class TrainResult:
    segment: str
    artifact_dir: Path
    architecture: str
    metric: str
    validation_value: float | None
    candidates: dict[str, float | None]
    metadata: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "artifact_dir": str(self.artifact_dir),
            "architecture": self.architecture,
            "metric": self.metric,
            "validation_value": self.validation_value,
            "candidates": self.candidates,
        }


def read_segment(dataset_path: str | Path, segment: str) -> pd.DataFrame:
    """The rows of one segment from a split dataset (Parquet, filtered while reading)."""
    df = pd.read_parquet(dataset_path, filters=[(SEGMENT_COLUMN, "==", segment)])
    if df.empty:
        raise UserError(f"segment {segment!r} has no rows in {str(dataset_path)!r}")
    return df


def train_shard(
    dataset_path: str | Path,
    spec: FleetSpec,
    segments: list[str],
    output_dir: str | Path,
    params: TrainingSpec | None = None,
    log: Any = print,
) -> list[TrainResult]:
    """Train the best model of each segment in `segments`; artifacts go to `output_dir/<segment slug>/`."""
    results = []
    for segment in segments:
        started = time.perf_counter()
        result = train_segment(
            read_segment(dataset_path, segment),
            spec,
            segment,
            Path(output_dir) / segment_slug(segment),
            params=params,
        )
        log(
            f"trained {segment}: {result.architecture} {result.metric}={_fmt(result.validation_value)} "
            f"(candidates {result.candidates}) in {time.perf_counter() - started:.1f}s"
        )
        results.append(result)
    return results


def train_segment(
    rows: pd.DataFrame,
    spec: FleetSpec,
    segment: str,
    output_dir: str | Path,
    params: TrainingSpec | None = None,
    architectures: list[Architecture] | None = None,
) -> TrainResult:
    """Train each architecture on the segment's train split, keep the best on validation, save it."""
    from fleetops.training.artifact import save_artifact

    params = params or spec.training
    architectures = architectures or list(spec.architectures)
    typed = coerce_features(rows, spec.features.numeric, spec.features.categorical)
    train = typed[typed[SPLIT_COLUMN] == TRAIN]
    validation = typed[typed[SPLIT_COLUMN] == VALIDATION]
    if len(train) == 0 or len(validation) == 0:
        raise UserError(
            f"segment {segment!r} has {len(train)} train and {len(validation)} validation rows; both must be non-empty"
        )
    classes = class_names(typed[spec.label]) if spec.task.is_classification else []

    best: tuple[Any, str, float | None, dict] | None = None
    candidates: dict[str, float | None] = {}
    for architecture in architectures:
        model, epochs, metrics = fit(train, validation, spec, architecture, params, classes)
        value = metrics.get(spec.primary_metric)
        candidates[architecture.value] = value
        if best is None or _beats(value, best[2], spec.metric_goal):
            best = (model, architecture.value, value, {"epochs_trained": epochs, "validation_metrics": metrics})
    assert best is not None
    model, architecture, value, details = best
    metadata = {
        "fleet": spec.name,
        "segment": segment,
        "task": spec.task.value,
        "label": spec.label,
        "features": {"numeric": spec.features.numeric, "categorical": spec.features.categorical},
        "classes": classes,
        "architecture": architecture,
        "hyperparameters": params.model_dump(mode="json"),
        "primary_metric": spec.primary_metric,
        "rows": {"train": len(train), "validation": len(validation)},
        "data_sha256": frame_sha256(rows.drop(columns=[SPLIT_COLUMN], errors="ignore")),
        "spec_sha256": spec.fingerprint(),
        **details,
    }
    directory = save_artifact(model, metadata, statistics(train, spec), output_dir)
    return TrainResult(segment, directory, architecture, spec.primary_metric, value, candidates, metadata)


def fit(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    spec: FleetSpec,
    architecture: Architecture,
    params: TrainingSpec,
    classes: list[str],
) -> tuple[Any, int, dict[str, Any]]:
    """Fit one model with early stopping; return it, the epochs run and its validation metrics."""
    import keras
    import tensorflow as tf

    from fleetops.training.model import build_model, fit_preprocessing, set_determinism, to_inputs

    set_determinism(params.seed)
    features = {"numeric": spec.features.numeric, "categorical": spec.features.categorical}
    prep = fit_preprocessing(train, spec)
    model = build_model(spec, architecture, params, prep, len(classes))
    y_train, y_val = encode_labels(train[spec.label], classes), encode_labels(validation[spec.label], classes)
    train_ds = (
        tf.data.Dataset.from_tensor_slices((to_inputs(train, features), y_train))
        .shuffle(len(train), seed=params.seed, reshuffle_each_iteration=True)
        .batch(params.batch_size)
    )
    val_ds = tf.data.Dataset.from_tensor_slices((to_inputs(validation, features), y_val)).batch(4096)
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=params.early_stopping_patience, restore_best_weights=True
    )
    # The dataset shuffles itself (seeded); Keras' own shuffle flag does not apply to tf.data.
    history = model.fit(
        train_ds, validation_data=val_ds, epochs=params.epochs, callbacks=[stop], verbose=0, shuffle=False
    )
    predictions = np.asarray(model.predict_on_batch(to_inputs(validation, features)))
    return model, len(history.history["loss"]), evaluate_predictions(spec.task, y_val, predictions, classes)


def evaluate_predictions(task: Task, y: np.ndarray, outputs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Vertex metrics from raw model outputs (sigmoid column, softmax rows or values)."""
    if task is Task.REGRESSION:
        return regression_metrics(y, outputs.reshape(-1))
    if task is Task.BINARY:
        p = outputs.reshape(-1)
        outputs = np.stack([1 - p, p], axis=1)
    return classification_metrics(y, outputs, classes)


def class_names(labels: pd.Series) -> list[str]:
    """Label values as class names, in numeric order when they are numbers (so '1' is positive)."""
    values = labels.dropna().unique()
    numeric = pd.to_numeric(pd.Series(values), errors="coerce")
    if numeric.notna().all():
        order = np.argsort(numeric.to_numpy(), kind="stable")
        return [_label_str(values[i]) for i in order]
    return sorted(str(v) for v in values)


def encode_labels(labels: pd.Series, classes: list[str]) -> np.ndarray:
    """Class indices for classification labels, float values for regression."""
    if not classes:
        return labels.to_numpy(dtype="float32")
    index = {c: i for i, c in enumerate(classes)}
    as_str = labels.map(_label_str)
    unknown = sorted(set(as_str) - set(index))
    if unknown:
        raise UserError(f"label values {unknown[:10]} are not among the classes {classes}")
    return as_str.map(index).to_numpy(dtype="int32")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetops.training.trainer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, help="fleet spec YAML")
    parser.add_argument("--data", required=True, help="split dataset (Parquet written by the split step)")
    parser.add_argument("--segment", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--architecture", choices=[a.value for a in Architecture], default=None)
    for name, field in TrainingSpec.model_fields.items():
        if name == "hidden_units":
            parser.add_argument("--hidden-units", type=lambda s: [int(x) for x in s.split(",")], default=None)
        else:
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(field.default), default=None)
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    overrides = {k: v for k, v in vars(args).items() if k in TrainingSpec.model_fields and v is not None}
    params = TrainingSpec.model_validate(spec.training.model_dump() | overrides)
    architectures = [Architecture(args.architecture)] if args.architecture else None
    result = train_segment(
        read_segment(args.data, args.segment), spec, args.segment, args.output_dir, params, architectures
    )
    print(json.dumps({"metric": result.metric, "value": result.validation_value, **result.summary()}))
    return 0


def _beats(value: float | None, best: float | None, goal: str) -> bool:
    if value is None:
        return False
    if best is None:
        return True
    return value > best if goal == "maximize" else value < best


def _label_str(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    sys.exit(main())
