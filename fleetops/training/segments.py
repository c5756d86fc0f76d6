"""Train fleet members: one segment, or every segment of a shard in one process.

`train_shard` trains every segment of a shard in one process (TensorFlow is
imported once per shard, not once per model). For each segment it trains each
architecture of the spec, keeps the best on the validation split, and writes
a model artifact directory. `train_segment` trains one; the trial command
(`python -m fleetops.training.trial`) runs it with hyperparameters given as flags.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
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
from fleetops.spec import Architecture, FleetSpec, Task, TrainingSpec
from fleetops.tuning.adapter import apply_parameters

SEGMENT_COLUMN = "__segment"

# A segment's tuning (`Platform.tune`): (spec, dataset path, segment, log) -> its tuning record.
Tuner = Callable[[FleetSpec, "str | Path", str, Any], dict[str, Any]]


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


def read_segments(dataset_path: str | Path, segments: list[str], require_all: bool = True) -> pd.DataFrame:
    """The rows of several segments at once (one filtered Parquet read); every segment must have rows."""
    df = pd.read_parquet(dataset_path, filters=[(SEGMENT_COLUMN, "in", list(segments))] if segments else None)
    if not segments:
        df = df.iloc[:0]
    missing = sorted(set(segments) - set(df[SEGMENT_COLUMN].unique()))
    if missing and require_all:
        raise UserError(f"segments {missing[:10]} have no rows in {str(dataset_path)!r}")
    return df


def train_shard(
    dataset_path: str | Path,
    spec: FleetSpec,
    segments: list[str],
    output_dir: str | Path,
    params: TrainingSpec | None = None,
    log: Any = print,
    tuned: dict[str, Any] | None = None,
    tuner: Tuner | None = None,
    fallback: dict[str, str] | None = None,
    global_model: Any = None,
    global_candidate: Any = None,
) -> ShardOutcome:
    """Train the best model of each segment in `segments`; artifacts go to `output_dir/<segment slug>/`.

    The segments are trained packed (`fleetops.training.packed`: one TensorFlow graph for all of them)
    unless the spec says `training.trainer: per_segment` or each segment is tuned on its own; then one
    at a time.

    With `tuned` parameters (tuned once for the fleet) every segment uses them; with per-segment
    tuning enabled in the spec, each segment is tuned first by `tuner` (`Platform.tune`: where the study
    runs and keeps its state is the platform's business, never the model folder).
    `global_model` (`packed.GlobalModel`) is where `training.warm_start: global` starts and what
    `fallback` segments (segment -> reason) are given. A segment whose own training fails gets the
    spec's failure policy: recorded in `failed` (skip), or given the global model (global), or the
    error is raised (fail). `global_candidate` (`packed.GlobalCandidate`, with `training.candidates:
    [segment, global]`) competes with each segment's own models (`fleetops.training.candidates`).
    """
    from fleetops.spec import FailurePolicy
    from fleetops.training.packed import export_fallback, train_pack

    fallback = dict(fallback or {})
    classes = fleet_classes(dataset_path, spec)
    per_segment_tuning = not tuned and spec.tuning.enabled and spec.tuning.scope == "per_segment"
    if per_segment_tuning and tuner is None:
        raise UserError("the spec tunes each segment (tuning.scope: per_segment): pass tuner=platform.tune")
    warm = global_model if spec.training.warm_start == "global" else None
    results: list[TrainResult] = []
    failed: dict[str, str] = {}
    diverged: dict[str, str] = {}
    if segments and spec.training.trainer == "packed" and not per_segment_tuning:
        started = time.perf_counter()
        pack_params, architectures = apply_parameters(spec, tuned) if tuned else (params, None)
        results = train_pack(
            read_segments(dataset_path, segments),
            spec,
            output_dir,
            params=pack_params,
            architectures=architectures,
            tuning={"best_parameters": tuned, "scope": "fleet"} if tuned else None,
            log=log,
            classes=classes,
            warm_start=warm,
            failures=diverged,
            global_candidate=global_candidate,
        )
        log(f"trained {len(results)} segment(s) packed in {time.perf_counter() - started:.1f}s")
    for segment, reason in diverged.items():
        if spec.segment_failures.policy == FailurePolicy.FAIL:
            raise UserError(f"segment {segment!r}: {reason} (segment_failures.policy: fail)")
        _route_failure(spec, segment, reason, global_model is not None, fallback, failed)
    for segment in segments if not results else []:
        started = time.perf_counter()
        try:
            result = _train_one(
                dataset_path,
                spec,
                segment,
                output_dir,
                params,
                tuned,
                tuner if per_segment_tuning else None,
                log,
                global_candidate,
            )
        except Exception as exc:  # one segment never stops the fleet, unless the spec says so
            if spec.segment_failures.policy == FailurePolicy.FAIL:
                raise
            reason = f"training failed: {type(exc).__name__}: {exc}"
            log(f"segment {segment}: {reason}")
            _route_failure(spec, segment, reason, global_model is not None, fallback, failed)
            continue
        log(
            f"trained {segment}: {result.architecture} {result.metric}={_fmt(result.validation_value)} "
            f"(candidates {result.candidates}) in {time.perf_counter() - started:.1f}s"
        )
        results.append(result)
    for segment, reason in sorted(fallback.items()):
        if global_model is None:
            raise UserError(f"segment {segment!r} needs the fleet's global model ({reason}), but none was trained")
        export_fallback(global_model, segment, reason, output_dir)
        log(f"segment {segment}: the fleet's global model ({reason})")
    outcome = ShardOutcome(results, sorted(fallback), failed)
    outcome.write(output_dir)
    return outcome


def _route_failure(
    spec: FleetSpec, segment: str, reason: str, have_global: bool, fallback: dict[str, str], failed: dict[str, str]
) -> None:
    """A segment whose training failed: given the global model (policy `global`), else recorded as failed."""
    from fleetops.spec import FailurePolicy

    if spec.segment_failures.policy == FailurePolicy.GLOBAL and have_global:
        fallback[segment] = reason
    else:
        failed[segment] = reason


@dataclass
class ShardOutcome:
    """What a train step produced: trained segments, segments given the global model, and failures."""

    results: list[TrainResult]
    fallback: list[str]
    failed: dict[str, str]

    def write(self, output_dir: str | Path) -> None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / OUTCOME_FILE).write_text(json.dumps(self.summary(), indent=2, sort_keys=True))

    def summary(self) -> dict[str, Any]:
        return {"models": [r.summary() for r in self.results], "fallback": self.fallback, "failed": self.failed}


OUTCOME_FILE = "outcome.json"


def read_outcome(model_dir: str | Path) -> dict[str, Any]:
    """The train step's outcome in its model folder: fallback segments and failures (reasons)."""
    path = Path(model_dir) / OUTCOME_FILE
    return json.loads(path.read_text()) if path.is_file() else {"models": [], "fallback": [], "failed": {}}


def fleet_classes(dataset_path: str | Path, spec: FleetSpec) -> list[str]:
    """The class names of the whole fleet (one column read), so every model has the same outputs."""
    if not spec.task.is_classification:
        return []
    return class_names(pd.read_parquet(dataset_path, columns=[spec.label])[spec.label])


def _train_one(
    dataset_path: str | Path,
    spec: FleetSpec,
    segment: str,
    output_dir: str | Path,
    params: TrainingSpec | None,
    tuned: dict[str, Any] | None,
    tuner: Tuner | None,
    log: Any,
    global_candidate: Any = None,
) -> TrainResult:
    """One segment with the one-at-a-time trainer, tuned first by `tuner` when one is given."""
    segment_params, architectures, record = params, None, None
    if tuned:
        segment_params, architectures = apply_parameters(spec, tuned)
    elif tuner is not None:
        record = tuner(spec, dataset_path, segment, log)
        segment_params, architectures = apply_parameters(spec, record["best_parameters"])
    return train_segment(
        read_segment(dataset_path, segment),
        spec,
        segment,
        Path(output_dir) / segment_slug(segment),
        params=segment_params,
        architectures=architectures,
        tuning=record or ({"best_parameters": tuned, "scope": "fleet"} if tuned else None),
        global_candidate=global_candidate,
    )


def train_segment(
    rows: pd.DataFrame,
    spec: FleetSpec,
    segment: str,
    output_dir: str | Path,
    params: TrainingSpec | None = None,
    architectures: list[Architecture] | None = None,
    tuning: dict[str, Any] | None = None,
    global_candidate: Any = None,
) -> TrainResult:
    """Train each architecture on the segment's train split, keep the best on validation, save it.

    The candidates and the choice are `fleetops.training.candidates`' (the packed trainer's too): each
    architecture, the ensemble of the others, the global model; a candidate that fails to train is
    recorded and the others compete. A Keras model's artifact also holds its LiteRT flatbuffers
    (`fleetops.training.litert`).
    """
    from fleetops.training.artifact import shape_outputs
    from fleetops.training.candidates import (
        Built,
        SegmentRows,
        add_ensemble,
        add_global,
        choose,
        export_choice,
        fit_tree_segments,
        score,
        selection_record,
        split_rows,
    )
    from fleetops.training.litert import LiteExporter
    from fleetops.training.model import to_inputs

    params = params or spec.training
    architectures = architectures or list(spec.architectures)
    typed = coerce_features(rows, spec.features.numeric, spec.features.categorical)
    train, validation, test = split_rows(typed)
    if len(train) == 0 or len(validation) == 0:
        raise UserError(
            f"segment {segment!r} has {len(train)} train and {len(validation)} validation rows; both must be non-empty"
        )
    classes = class_names(typed[spec.label]) if spec.task.is_classification else []
    y_val, y_test = encode_labels(validation[spec.label], classes), encode_labels(test[spec.label], classes)
    features = {"numeric": spec.features.numeric, "categorical": spec.features.categorical}

    scored, built, failed = [], {}, {}
    for architecture in architectures:
        name = architecture.value
        if architecture is Architecture.ENSEMBLE:
            continue
        if architecture is Architecture.GBT:
            tree = fit_tree_segments({segment: typed}, spec, params, classes)[segment]
            if tree.failure:
                failed[name] = tree.failure
                continue
            outputs = [tree.validation, tree.test]
            details = {"rounds_trained": tree.rounds, "trainer": {"kind": "gbt"}}
            built[name] = Built(tree.model, name, details)
        else:
            try:
                model, epochs, _ = fit(train, validation, spec, architecture, params, classes)
            except Exception as exc:  # one candidate's failure is recorded; the others still compete
                failed[name] = f"training failed: {type(exc).__name__}: {exc}"
                continue
            outputs = [
                shape_outputs(spec.task.value, np.asarray(model.predict_on_batch(to_inputs(part, features))))
                if len(part)
                else None
                for part in (validation, test)
            ]
            built[name] = Built(model, name, {"epochs_trained": epochs, "trainer": {"kind": "one_at_a_time"}})
        scored.append(score(name, spec, classes, y_val, y_test, outputs[0], outputs[1]))
    weights = None
    if Architecture.ENSEMBLE in architectures:
        weights = add_ensemble(spec, classes, y_val, y_test, scored, list(scored), failed)
    if global_candidate is not None:
        add_global(spec, classes, y_val, y_test, scored, global_candidate, segment, validation, test)
    chosen = choose(spec, scored)
    if chosen is None:
        problems = "; ".join(f"{k}: {v}" for k, v in sorted(failed.items())) or "every value is undefined"
        raise UserError(f"segment {segment!r}: no candidate has a validation value ({problems})")
    record = selection_record(spec, scored, chosen, failed, global_candidate)
    data_sha256 = frame_sha256(rows.drop(columns=[SPLIT_COLUMN], errors="ignore"))
    segment_rows = SegmentRows(segment, typed, classes, statistics(train, spec, typed=True), data_sha256)
    architecture, metadata = export_choice(
        output_dir,
        chosen,
        built,
        weights,
        global_candidate,
        record,
        spec,
        segment_rows,
        params,
        tuning,
        LiteExporter(),
        {},
    )
    values = {c.name: c.validation_metrics.get(spec.primary_metric) for c in scored}
    value = chosen.validation_metrics.get(spec.primary_metric)
    return TrainResult(segment, Path(output_dir), architecture, spec.primary_metric, value, values, metadata)


def export_litert(
    exporter: Any,
    model: Any,
    directory: str | Path,
    spec: FleetSpec,
    validation: pd.DataFrame,
    classes: list[str],
    metadata: dict[str, Any],
    stats: dict[str, Any],
) -> dict[str, Any]:
    """Write `model`'s LiteRT flatbuffers into its artifact directory; what its metadata records of them.

    `validation` are the segment's typed validation rows: the flatbuffers are checked against `model` there.
    The record names the identity of the model they were checked against (`metadata` and `stats` are what
    `save_artifact` will save): a model saved with other weights under this metadata has another
    identity, and its stale record is not trusted.
    """
    from fleetops.fingerprints import model_identity_sha256

    record = exporter.export(
        model,
        directory,
        spec.task.value,
        {"numeric": spec.features.numeric, "categorical": spec.features.categorical},
        validation,
        encode_labels(validation[spec.label], classes),
        classes,
        spec.primary_metric,
        spec.metric_goal,
    )
    return record | {"identity_sha256": model_identity_sha256(model, metadata, stats)}


def segment_metadata(
    spec: FleetSpec,
    segment: str,
    rows: pd.DataFrame | None,
    typed: pd.DataFrame,
    classes: list[str],
    architecture: str,
    params: TrainingSpec,
    tuning: dict[str, Any] | None,
    details: dict[str, Any],
    data_sha256: str | None = None,
) -> dict[str, Any]:
    """What a segment's model artifact records about how it was made (both trainers write the same keys).

    `data_sha256` is `frame_sha256` of `rows` without the split column, when the caller has it already
    (`rows` is then not needed).
    """
    return {
        "fleet": spec.name,
        "segment": segment,
        "task": spec.task.value,
        "label": spec.label,
        "features": {"numeric": spec.features.numeric, "categorical": spec.features.categorical},
        "classes": classes,
        "architecture": architecture,
        "hyperparameters": params.model_dump(mode="json"),
        "primary_metric": spec.primary_metric,
        "rows": {
            "train": int((typed[SPLIT_COLUMN] == TRAIN).sum()),
            "validation": int((typed[SPLIT_COLUMN] == VALIDATION).sum()),
        },
        "data_sha256": data_sha256 or frame_sha256(rows.drop(columns=[SPLIT_COLUMN], errors="ignore")),
        "spec_sha256": spec.fingerprint(),
        # Which runtime the server may use for this model (`Predictor.load` reads it; the server has no spec).
        "serving": {
            "runtime": spec.serving.runtime,
            "quantized_max_metric_drop": spec.serving.quantized_max_metric_drop,
        },
        "tuning": tuning,
        **details,
    }


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


def beats(value: float | None, best: float | None, goal: str) -> bool:
    """True when a validation value is better than the best so far (an undefined value never is)."""
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
