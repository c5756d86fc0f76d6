"""What competes for a segment, and how the winner is chosen: shared by both trainers.

Every candidate of a segment is scored on the segment's validation rows, which choose, and on
its test rows, which only report (the evaluation shows each candidate's test value beside its
validation value, so a user sees what the choice was worth; the test split never chooses):

- each architecture of the spec: `linear`, `dnn` (Keras; from scratch or warm-started) and `gbt`
  (boosted trees, `fit_tree_segments`: the shard's segments trained in parallel threads);
- `ensemble`: the weighted average of the segment's other models, weights fitted on validation
  (`fleetops.training.ensemble`); its validation value is cross-fitted (each half of the rows
  scored with weights fitted on the other half), so it does not win on rows that set its weights;
- `global` (with `training.candidates: [segment, global]`): the fleet's global model, trained once
  on every segment's train rows with the segment as a feature, scored on this segment's rows.

A candidate that fails to train is recorded with its reason and the others still compete.
`selection_record` is what the artifact's metadata keeps (`selection`), the evaluation shows
and the registry's lineage carries.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fleetops.data.split import SPLIT_COLUMN, TEST, TRAIN, VALIDATION
from fleetops.spec import Architecture, FleetSpec, Task, TrainingSpec

ENSEMBLE = Architecture.ENSEMBLE.value
GLOBAL = "global"


@dataclass
class Scored:
    """One candidate of one segment: shaped outputs on its validation and test rows, and their metrics."""

    name: str
    validation: np.ndarray | None
    test: np.ndarray | None
    validation_metrics: dict[str, Any]
    test_metrics: dict[str, Any]


def score(
    name: str,
    spec: FleetSpec,
    classes: list[str],
    y_validation: np.ndarray,
    y_test: np.ndarray,
    validation: np.ndarray,
    test: np.ndarray | None,
) -> Scored:
    """A candidate's primary metric on validation and test ({} where outputs are missing or not finite).

    Only the primary metric: it is all the choice needs, and the full metrics of a fleet's every
    candidate were most of a shard's metric work. The chosen model's full validation metrics are
    computed when it is saved (`full_metrics`).
    """
    return Scored(
        name,
        validation,
        test,
        _primary(spec, y_validation, validation, classes),
        _primary(spec, y_test, test, classes),
    )


def _primary(spec: FleetSpec, y: np.ndarray, shaped: np.ndarray | None, classes: list[str]) -> dict[str, Any]:
    from fleetops.evaluation.metrics import primary_value

    if shaped is None or len(y) == 0 or not np.isfinite(shaped).all():
        return {}
    outputs = shaped.reshape(-1) if spec.task is Task.REGRESSION else shaped
    return {spec.primary_metric: primary_value(spec.task.value, spec.primary_metric, y, outputs, classes)}


def full_metrics(task: Task, y: np.ndarray, shaped: np.ndarray | None, classes: list[str]) -> dict[str, Any]:
    """Every Vertex metric of shaped outputs ({} where they are missing or not finite)."""
    from fleetops.evaluation.metrics import classification_metrics, regression_metrics

    if shaped is None or len(y) == 0 or not np.isfinite(shaped).all():
        return {}
    if task is Task.REGRESSION:
        return regression_metrics(y, shaped.reshape(-1))
    return classification_metrics(y, shaped, classes)


def add_ensemble(
    spec: FleetSpec,
    classes: list[str],
    y_validation: np.ndarray,
    y_test: np.ndarray,
    scored: list[Scored],
    members: list[Scored],
    failed: dict[str, str],
) -> dict[str, float] | None:
    """Score the ensemble of `members` into `scored` and return its weights; or record in `failed` why not.

    It needs at least two members with finite validation outputs.
    """
    from fleetops.training.ensemble import combine, cross_fitted, fit_weights

    usable = [m for m in members if m.validation_metrics and m.validation is not None and m.test is not None]
    if len(usable) < 2 or len(y_validation) < 2:
        failed[ENSEMBLE] = "fewer than two members have finite validation outputs"
        return None
    task = spec.task.value
    validation = {m.name: m.validation for m in usable}
    weights = fit_weights(task, y_validation, validation)
    honest = cross_fitted(task, y_validation, validation)
    test = combine({m.name: m.test for m in usable}, weights)
    # Its validation outputs are the cross-fitted ones: what its validation metrics are computed on.
    scored.append(score(ENSEMBLE, spec, classes, y_validation, y_test, honest, test))
    return weights


def add_global(
    spec: FleetSpec,
    classes: list[str],
    y_validation: np.ndarray,
    y_test: np.ndarray,
    scored: list[Scored],
    global_candidate: Any,
    segment: str,
    validation: pd.DataFrame,
    test: pd.DataFrame,
) -> None:
    """Score the fleet's global candidate on the segment's typed validation and test rows into `scored`."""
    outputs = [global_candidate.outputs(segment, rows) for rows in (validation, test)]
    scored.append(score(GLOBAL, spec, classes, y_validation, y_test, outputs[0], outputs[1]))


def choose(spec: FleetSpec, candidates: list[Scored]) -> Scored | None:
    """The candidate with the best validation value of the primary metric (ties: the earlier one).

    When no candidate has a value (auRoc on validation rows of one class), the first candidate with
    finite validation outputs is kept, as the first architecture always was; None when there is none.
    """
    from fleetops.training.segments import beats

    metric, best = spec.primary_metric, None
    for candidate in candidates:
        value = candidate.validation_metrics.get(metric)
        if value is None or not np.isfinite(value):
            continue
        if best is None or beats(value, best.validation_metrics[metric], spec.metric_goal):
            best = candidate
    if best is None:
        best = next((c for c in candidates if c.validation_metrics), None)
    return best


def selection_record(
    spec: FleetSpec,
    candidates: list[Scored],
    chosen: Scored,
    failed: dict[str, str],
    global_candidate: Any = None,
) -> dict[str, Any]:
    """What the artifact keeps of the choice: every candidate's validation and test value, the winner and why.

    The global candidate's entry also names its architecture (its name does not).
    """
    architectures = {GLOBAL: global_candidate.architecture} if global_candidate is not None else None
    metric = spec.primary_metric
    table: dict[str, dict[str, Any]] = {}
    for candidate in candidates:
        entry = {
            "validation": candidate.validation_metrics.get(metric),
            "test": candidate.test_metrics.get(metric),
        }
        if architectures and candidate.name in architectures:
            entry["architecture"] = architectures[candidate.name]
        table[candidate.name] = entry
    value = chosen.validation_metrics.get(metric)
    others = sorted(
        ((c.name, c.validation_metrics.get(metric)) for c in candidates if c is not chosen),
        key=lambda item: (item[1] is None, -(item[1] or 0) if spec.metric_goal == "maximize" else (item[1] or 0)),
    )
    runner_up = next(((n, v) for n, v in others if v is not None), None)
    if value is None:
        reason = f"no candidate has a validation {metric} (undefined on these rows); kept the first, {chosen.name}"
    else:
        reason = f"{chosen.name} has the best validation {metric}: {value:.4f}"
    if value is None:
        pass
    elif runner_up is not None:
        reason += f" (next: {runner_up[0]} {runner_up[1]:.4f})"
    else:
        reason += " (the only candidate with a validation value)"
    record: dict[str, Any] = {
        "metric": metric,
        "goal": spec.metric_goal,
        "candidates": table,
        "failed": dict(sorted(failed.items())),
        "chosen": chosen.name,
        "reason": reason,
    }
    if GLOBAL in table and chosen.name != GLOBAL:
        record["global_margin"] = _margin(spec, value, table[GLOBAL]["validation"])
    elif chosen.name == GLOBAL:
        best_own = next((v for n, v in others if v is not None), None)
        record["global_margin"] = _margin(spec, best_own, value)
    return record


def _margin(spec: FleetSpec, own: float | None, global_value: float | None) -> float | None:
    """How much better (positive) the segment's own best is than the global model on validation."""
    if own is None or global_value is None:
        return None
    return own - global_value if spec.metric_goal == "maximize" else global_value - own


def split_rows(typed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A segment's typed train, validation and test rows."""
    split = typed[SPLIT_COLUMN]
    return typed[split == TRAIN], typed[split == VALIDATION], typed[split == TEST]


@dataclass
class TreeFit:
    """One segment's boosted trees, or why they failed."""

    model: Any = None
    rounds: int = 0
    failure: str | None = None
    validation: np.ndarray | None = None  # shaped outputs on the segment's validation rows
    test: np.ndarray | None = None  # ... and on its test rows


def fit_tree_segments(
    typed: dict[str, pd.DataFrame],
    spec: FleetSpec,
    params: TrainingSpec,
    classes: list[str],
    threads: int | None = None,
) -> dict[str, TreeFit]:
    """Boosted trees for each segment (typed rows with the split column), trained in parallel threads.

    The inputs of every segment are encoded at once (`encode_tree_inputs`); what is left per segment is
    XGBoost's, which releases the GIL while it boosts, so `threads` segments (default: the CPUs) train at
    once, one XGBoost thread each (small segments gain nothing from more threads per model).
    """
    from fleetops.training.artifact import shape_outputs
    from fleetops.training.trees import TreeModel, fit_booster

    names = list(typed)
    inputs = encode_tree_inputs(typed, spec, classes)

    def one(s: int) -> TreeFit:
        rows = slice(inputs.starts[s], inputs.starts[s + 1])
        x, y, split = inputs.x[rows], inputs.y[rows], inputs.split[rows]
        train, validation, test = split == TRAIN, split == VALIDATION, split == TEST
        try:
            if not train.any() or not validation.any():
                raise ValueError(
                    f"{int(train.sum())} train and {int(validation.sum())} validation rows; both must be non-empty"
                )
            vocabularies = {column: inputs.vocabularies[column][s] for column in spec.features.categorical}
            model = TreeModel(None, spec.task.value, spec.features.numeric, spec.features.categorical, vocabularies)
            rounds = fit_booster(model, x[train], y[train], x[validation], y[validation], params, len(classes))
        except Exception as exc:  # one candidate's failure is recorded; the others still compete
            return TreeFit(failure=f"gbt training failed: {type(exc).__name__}: {exc}")
        outputs = shape_outputs(spec.task.value, model.predict_matrix(x))
        return TreeFit(model, rounds, validation=outputs[validation], test=outputs[test])

    workers = threads or max(1, min(len(names), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(names, pool.map(one, range(len(names))), strict=True))


@dataclass
class TreeInputs:
    """Every segment's rows as boosted trees take them, one after another: segment s is rows starts[s]:starts[s+1]."""

    x: np.ndarray  # (rows, features) float32: numerics, then category codes in the segment's vocabulary
    y: np.ndarray  # class index or value
    split: np.ndarray
    starts: np.ndarray
    vocabularies: dict[str, list[list[str]]]  # column -> per segment, its sorted vocabulary


def encode_tree_inputs(typed: dict[str, pd.DataFrame], spec: FleetSpec, classes: list[str]) -> TreeInputs:
    """Encode the rows of every segment at once, each categorical with its segment's own vocabulary.

    A segment's vocabulary is `model.fit_vocabularies`' (its train rows' values, sorted; the most frequent
    `MAX_VOCABULARY` when there are more, computed by that function itself for such a segment). The codes are
    found with one join per column for the whole shard: per segment they cost more than the boosting.
    """
    from fleetops.data.validation import MAX_VOCABULARY
    from fleetops.training.model import fit_vocabularies
    from fleetops.training.segments import encode_labels

    frames = list(typed.values())
    sizes = np.array([len(frame) for frame in frames])
    starts = np.concatenate([[0], np.cumsum(sizes)])
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    owner = np.repeat(np.arange(len(frames)), sizes)
    split = rows[SPLIT_COLUMN].to_numpy() if len(rows) else np.zeros(0, dtype=object)
    numeric, categorical = spec.features.numeric, spec.features.categorical
    x = np.empty((len(rows), len(numeric) + len(categorical)), dtype=np.float32)
    for j, column in enumerate(numeric):
        x[:, j] = rows[column].to_numpy(dtype="float32")
    vocabularies: dict[str, list[list[str]]] = {}
    is_train = split == TRAIN
    for k, column in enumerate(categorical):
        values = rows[column].astype(str)
        seen = pd.DataFrame({"segment": owner[is_train], "value": values[is_train].to_numpy()}).drop_duplicates()
        # Sorted by segment, then value: position within the segment is the code, as in a sorted vocabulary.
        table = seen.sort_values(["segment", "value"], kind="stable").reset_index(drop=True)
        table["code"] = table.groupby("segment").cumcount()
        per_segment = table.groupby("segment")["value"].agg(list)
        lists = [per_segment.get(s, []) for s in range(len(frames))]
        for s in np.flatnonzero([len(v) > MAX_VOCABULARY for v in lists]):  # the most frequent only
            train = frames[s][frames[s][SPLIT_COLUMN] == TRAIN]
            lists[s] = fit_vocabularies(train, spec)[column]
            table = table[table["segment"] != s]
            extra = pd.DataFrame({"segment": s, "value": lists[s], "code": np.arange(len(lists[s]))})
            table = pd.concat([table, extra], ignore_index=True)
        vocabularies[column] = lists
        lookup = pd.DataFrame({"segment": owner, "value": values.to_numpy()})
        codes = lookup.merge(table, on=["segment", "value"], how="left")["code"]
        x[:, len(numeric) + k] = codes.to_numpy(dtype="float32", na_value=np.nan)
    y = encode_labels(rows[spec.label], classes) if len(rows) else np.zeros(0)
    return TreeInputs(x, y, split, starts, vocabularies)


@dataclass
class Built:
    """A trained candidate that can be saved: its model (or a function giving it), architecture and details.

    The packed trainer's Keras models come from a template re-filled per segment (`packed.SegmentExporter`):
    `model` is then a function, called just before the model is saved.
    """

    model: Any
    architecture: str
    details: dict[str, Any]

    def get(self) -> Any:
        import inspect

        return self.model() if inspect.isfunction(self.model) else self.model  # a Keras model is callable too


@dataclass
class SegmentRows:
    """What saving a segment's model needs of its data: typed rows, classes, statistics and the data's hash."""

    segment: str
    typed: pd.DataFrame
    classes: list[str]
    statistics: dict[str, Any]
    data_sha256: str  # `frame_sha256` of the segment's rows as read, without the split column

    @property
    def validation(self) -> pd.DataFrame:
        return self.typed[self.typed[SPLIT_COLUMN] == VALIDATION]


def save_built(
    directory: Any,
    built: Built,
    spec: FleetSpec,
    rows: SegmentRows,
    params: TrainingSpec,
    tuning: dict[str, Any] | None,
    lite: Any,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Save one candidate's model as a standalone artifact in `directory`; its metadata (identity included)."""
    from fleetops.training.artifact import read_metadata, save_artifact
    from fleetops.training.segments import export_litert, segment_metadata

    model = built.get()
    details = built.details | (extra or {})
    metadata = segment_metadata(
        spec,
        rows.segment,
        None,
        rows.typed,
        rows.classes,
        built.architecture,
        params,
        tuning,
        details,
        rows.data_sha256,
    )
    if Architecture(built.architecture).is_keras:
        metadata["litert"] = export_litert(
            lite, model, directory, spec, rows.validation, rows.classes, metadata, rows.statistics
        )
    save_artifact(model, metadata, rows.statistics, directory)
    return read_metadata(directory)


def export_choice(
    directory: Any,
    chosen: Scored,
    built: dict[str, Built],
    weights: dict[str, float] | None,
    global_candidate: Any,
    record: dict[str, Any],
    spec: FleetSpec,
    rows: SegmentRows,
    params: TrainingSpec,
    tuning: dict[str, Any] | None,
    lite: Any,
    common: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    """Save the chosen candidate as the segment's artifact in `directory`: its architecture and metadata.

    An ensemble saves its members (those with weight) under `members/`, the global model is copied in
    with the segment fixed; `common` (trainer, transfer, ...) and the selection record go into the
    artifact's metadata in every case.
    """
    from pathlib import Path

    from fleetops.names import METADATA_IDENTITY
    from fleetops.training.artifact import read_metadata, save_artifact
    from fleetops.training.ensemble import MEMBERS_DIR, EnsembleModel
    from fleetops.training.segments import encode_labels, segment_metadata

    directory = Path(directory)
    y_validation = encode_labels(rows.validation[spec.label], rows.classes)
    validation_metrics = full_metrics(spec.task, y_validation, chosen.validation, rows.classes)
    extra = common | {"selection": record, "validation_metrics": validation_metrics}
    if chosen.name in built:
        metadata = save_built(directory, built[chosen.name], spec, rows, params, tuning, lite, extra)
        return built[chosen.name].architecture, metadata
    if chosen.name == ENSEMBLE:
        assert weights is not None
        used = {name: w for name, w in weights.items() if w > 0}
        identities = {}
        for name in used:
            member = save_built(directory / MEMBERS_DIR / name, built[name], spec, rows, params, tuning, lite)
            identities[name] = member[METADATA_IDENTITY]
        model = EnsembleModel(spec.task.value, dict.fromkeys(used), used, identities=identities)
        architecture = ENSEMBLE
        details = extra | {"ensemble_weights": weights}
    else:
        assert chosen.name == GLOBAL and global_candidate is not None
        member = global_candidate.copy_into(directory / MEMBERS_DIR / GLOBAL)
        fixed = {global_candidate.segment_feature: rows.segment}
        model = EnsembleModel(
            spec.task.value, {GLOBAL: None}, {GLOBAL: 1.0}, fixed, identities={GLOBAL: member[METADATA_IDENTITY]}
        )
        architecture = f"global_{global_candidate.architecture}"
        details = extra
    metadata = segment_metadata(
        spec, rows.segment, None, rows.typed, rows.classes, architecture, params, tuning, details, rows.data_sha256
    )
    save_artifact(model, metadata, rows.statistics, directory)
    return architecture, read_metadata(directory)
