"""The steps of the fleet training pipeline, one function per component.

Each component parses its inputs, calls one function here and writes the
result; everything here runs (and is tested) without KFP. The Markdown the
evaluate and summarize steps write is `fleetops.evaluation.report`'s.

    ingest -> validate -> split -> [per shard: train -> evaluate -> register] -> summarize
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fleetops.data.split import SPLIT_COLUMN, TEST, with_splits
from fleetops.data.validation import ValidationReport, schema, segment_values, statistics, validate
from fleetops.errors import NotFoundError, UserError
from fleetops.evaluation import fairness
from fleetops.evaluation.metrics import (
    CLASSIFICATION_SCHEMA,
    REGRESSION_SCHEMA,
    headline,
    is_better,
    json_safe,
    roc_curve,
    task_metrics,
    undefined_reasons,
)
from fleetops.fingerprints import frame_sha256
from fleetops.names import (
    CHAMPION_ALIAS,
    DEFAULT_ALIAS,
    LABEL_ARCHITECTURE,
    LABEL_FLEET,
    LABEL_MANAGED_BY,
    LABEL_SEGMENT,
    METADATA_IDENTITY,
    label_value,
    model_id,
    segment_slug,
)
from fleetops.platform import Platform
from fleetops.platform.registry import EvaluationInput, UploadRequest
from fleetops.spec import PREBUILT_TF_IMAGE, FleetSpec, ShardingSpec, Task, is_prebuilt_tf_image
from fleetops.training.segments import SEGMENT_COLUMN

# Vertex collects at most 100 artifacts from one ParallelFor.
MAX_SHARDS = 100
MIN_SLICE_ROWS = 20
# Defined on any test split (one class, a constant label): the evidence a first champion
# may be promoted on when its primary metric is undefined there.
FALLBACK_METRIC = {Task.BINARY: "logLoss", Task.MULTICLASS: "logLoss", Task.REGRESSION: "rootMeanSquaredError"}


def ingest(spec: FleetSpec, platform: Platform, output_path: str | Path) -> dict[str, Any]:
    """Read the spec's data source into a Parquet file; return row count, columns and content hash."""
    df = platform.read_table(spec.data.source)
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(output_path, index=False)
    return {
        "rows": len(df),
        "columns": list(map(str, df.columns)),
        "sha256": frame_sha256(df),
        "source": spec.data.source,
    }


def validate_dataset(spec: FleetSpec, data_path: str | Path) -> tuple[ValidationReport, dict[str, Any]]:
    """Validate the data against the spec; on success also its schema and statistics (the baseline)."""
    df = pd.read_parquet(data_path)
    report = validate(df, spec)
    if not report.ok:
        return report, {}
    segments = segment_values(df, spec)
    kept = set(report.segments)
    baseline = {
        "schema": schema(df, spec),
        "fleet": statistics(df, spec),
        # One pass over the rows grouped by segment: a fleet of 10,000 segments is not 10,000 scans.
        "segments": {
            str(name): statistics(rows, spec) for name, rows in df.groupby(segments.to_numpy()) if str(name) in kept
        },
    }
    return report, baseline


def plan_shards(
    segment_rows: dict[str, int],
    sharding: ShardingSpec,
    fallback: dict[str, str] | None = None,
    max_shards: int = MAX_SHARDS,
) -> list[dict[str, Any]]:
    """Group segments into shards, the unit of one train/evaluate/register/deploy task each.

    With `sharding.models_per_task` set, shards hold that many segments (sorted by name). By default
    they are sized by work: as few shards as keep `concurrent_tasks` busy, at most
    `max_models_per_task` segments each, never more than `max_shards` (Vertex collects at most 100
    artifacts from one ParallelFor). Segments of similar size share a shard, since a packed shard
    runs as many steps as its largest segment needs, and the rows are split evenly across shards.
    `fallback` segments (segment -> why it is served by the global model) are spread over the shards too.

    Returns:
        [{"shard": i, "segments": [...], "fallback": {segment: reason}}].
    """
    fallback = fallback or {}
    names = sorted(segment_rows)
    total = len(names) + len(fallback)
    if not total:
        raise UserError("no segments to train: every segment was skipped (see the validation report)")
    if sharding.models_per_task is not None:
        per_shard = max(sharding.models_per_task, math.ceil(len(names) / max_shards))
        groups = [names[start : start + per_shard] for start in range(0, len(names), per_shard)] or [[]]
    else:
        wanted = max(sharding.concurrent_tasks, math.ceil(len(names) / sharding.max_models_per_task))
        count = max(1, min(max_shards, len(names), wanted))
        by_size = sorted(names, key=lambda name: (segment_rows[name], name))
        rows = np.array([segment_rows[name] for name in by_size], dtype="float64")
        before = np.concatenate([[0.0], np.cumsum(rows)[:-1]])
        index = np.minimum((before / max(rows.sum(), 1.0) * count).astype(int), count - 1)
        groups = [sorted(np.array(by_size, dtype=object)[index == i].tolist()) for i in range(count)]
        groups = [g for g in groups if g] or [[]]
    extra = sorted(fallback)
    return [
        {"shard": i, "segments": group, "fallback": {name: fallback[name] for name in extra[i :: len(groups)]}}
        for i, group in enumerate(groups)
    ]


def split_dataset(spec: FleetSpec, data_path: str | Path, output_path: str | Path) -> dict[str, int]:
    """Add the segment and split columns, keep the wanted segments, write Parquet sorted by segment."""
    df = pd.read_parquet(data_path)
    df[SEGMENT_COLUMN] = segment_values(df, spec)
    if spec.data.segments is not None:
        df = df[df[SEGMENT_COLUMN].isin(spec.data.segments)]
    df = with_splits(df, spec.data.split, spec.data.split_key)
    df = df.sort_values(SEGMENT_COLUMN, kind="stable")
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    # Small row groups let a shard's read skip other segments' rows.
    df.to_parquet(output_path, index=False, row_group_size=50_000)
    return {k: int(v) for k, v in df[SPLIT_COLUMN].value_counts().items()}


def evaluate_shard(
    spec: FleetSpec,
    platform: Platform,
    dataset_path: str | Path,
    model_dir: str | Path,
    segments: list[str],
    fallback: list[str] | tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Evaluate each segment's new model and its current champion on the same test rows.

    Each result carries `undefined`: metric name -> why that metric is undefined on
    the segment's test split (e.g. one class only); those metrics are None in `metrics`.
    The champion decision (`promote`, `reason`) follows the rule in `_champion`, then the spec's
    fairness gates (`_fairness_gate`). `fairness` holds the bias metrics of each sensitive column's
    values against the rest of the test rows (`fleetops.evaluation.fairness`) and the gates' checks.
    `fallback` segments carry the fleet's global model; one without test rows (or without
    any rows) has every test metric undefined, and the champion rule decides on the rest.
    """
    from fleetops.training.artifact import load_artifact
    from fleetops.training.segments import encode_labels, read_segments

    everything = [*segments, *fallback]
    # One read for the shard: a 500-segment shard is not 500 scans of the dataset.
    frame = read_segments(dataset_path, everything, require_all=False)
    by_segment = {str(name): rows for name, rows in frame.groupby(SEGMENT_COLUMN, sort=False)}
    results = []
    for segment in everything:
        rows = by_segment.get(segment, frame.iloc[:0])
        test = rows[rows[SPLIT_COLUMN] == TEST]
        started = time.perf_counter()
        # Loads the model as it is served: the Keras model, the booster, or every member of an ensemble.
        challenger = load_artifact(Path(model_dir) / segment_slug(segment))
        load_ms = (time.perf_counter() - started) * 1000
        if test.empty:
            metrics, scores, y = {}, None, None
            why = f"segment {segment!r} has no test rows ({len(rows)} row(s) in all)"
            undefined = {spec.primary_metric: f"{spec.primary_metric} is undefined: {why}"}
        else:
            y = encode_labels(test[spec.label], challenger.classes)
            scores = challenger.scores(test)
            metrics = task_metrics(spec.task, y, scores, challenger.classes)
            undefined = undefined_reasons(metrics, y, challenger.classes, f"the test split of segment {segment!r}")
        result: dict[str, Any] = {
            "segment": segment,
            "model_id": model_id(spec.name, segment),
            "test_rows": len(test),
            "metric": spec.primary_metric,
            "goal": spec.metric_goal,
            "metrics": metrics,
            "undefined": undefined,
            "slices": _slices(spec, test, y, scores, challenger.classes) if y is not None else [],
            "fairness": fairness.evaluate(
                spec.task.value, test, spec.evaluation.fairness_columns, y, scores, classes=challenger.classes
            ),
            "roc": roc_curve(y, scores) if spec.task.is_classification and y is not None else None,
            # The tuning trials behind this model, for the evaluation report.
            "tuning": challenger.metadata.get("tuning"),
            "fallback": challenger.metadata.get("fallback"),
            "transfer": challenger.metadata.get("transfer"),
            # What the trainer chose among the candidate architectures (and global model), and why.
            "architecture": challenger.metadata.get("architecture"),
            "selection": challenger.metadata.get("selection"),
            # Keras against its LiteRT flatbuffers (or the booster, or the ensemble), measured here: what
            # serving each one costs and changes.
            "runtimes": runtime_tradeoff(spec, challenger, load_ms, test, y, scores),
            # Test labels and scores, so the run summary can pool the metric over the whole fleet.
            "predictions": None
            if y is None
            else {"y": y.tolist(), "scores": np.round(scores, 6).tolist(), "classes": challenger.classes},
        }
        validation = challenger.metadata.get("validation_metrics") or {}
        result |= _champion(spec, platform, test, result["model_id"], metrics, undefined, validation)
        result |= _fairness_gate(spec, result)
        results.append(result)
    return results


# Single-instance predictions timed per runtime after the first (timed apart: Keras traces on it, and so
# does an ensemble's Keras member served without a flatbuffer).
LATENCY_REPEATS = {"keras": 9, "litert": 25, "xgboost": 25, "ensemble": 9}


def runtime_tradeoff(
    spec: FleetSpec,
    artifact: Any,
    load_ms: float,
    test: pd.DataFrame,
    y: np.ndarray | None,
    scores: np.ndarray | None,
) -> dict[str, Any]:
    """What each runtime of a model costs and changes, measured in this process.

    A Keras artifact, per runtime (`keras` and each LiteRT variant the artifact holds): file bytes,
    load ms (Keras: `load_artifact`, given as `load_ms`; LiteRT: read and build the interpreter), the
    first and the p50 ms of one instance through `Predictor.predict_columns` (what the server runs per
    request; Keras traces its graph on the first); for the LiteRT variants also the largest score
    difference from Keras (`scores`) on the test rows and the change of the primary metric there
    (`metric_delta`, variant minus Keras). `serving` is what `Predictor.load` will serve; `skipped`
    says why a variant was not exported. An artifact without flatbuffers has only `keras`.

    Boosted trees and ensembles have one runtime, the one `Predictor.load` serves them with, so nothing
    to compare it with: `xgboost` (bytes: the booster file) or `ensemble` (bytes: the whole artifact,
    members included; `members`: the runtime each member is served with, which decides its memory),
    each with its load ms (`load_artifact`: the booster, or every member) and first and p50 ms.
    """
    from fleetops.data.validation import coerce_features
    from fleetops.names import MODEL_FILE
    from fleetops.serving.lite import LiteModel
    from fleetops.serving.predictor import Predictor, choose_runtime
    from fleetops.training.artifact import shape_outputs
    from fleetops.training.litert import FILES, max_difference

    features = artifact.features
    typed = coerce_features(test, features["numeric"], features["categorical"])
    one = {c: [None] for c in features["numeric"]} | {c: [""] for c in features["categorical"]}
    if len(typed):
        first = typed.iloc[0]
        one = {c: [None if pd.isna(first[c]) else float(first[c])] for c in features["numeric"]}
        one |= {c: [str(first[c])] for c in features["categorical"]}
    metric = spec.primary_metric
    if artifact.kind != "keras":
        return _own_runtime(artifact, load_ms, one, metric)
    keras = Predictor(artifact)
    variants: dict[str, dict[str, Any]] = {
        "keras": {
            "bytes": (artifact.path / MODEL_FILE).stat().st_size,
            "load_ms": round(load_ms, 3),
            **_latency_ms(keras, one, LATENCY_REPEATS["keras"]),
        }
    }
    keras_value = task_metrics(spec.task, y, scores, artifact.classes).get(metric) if y is not None else None
    arrays = {c: typed[c].to_numpy(dtype="float32").reshape(-1, 1) for c in features["numeric"]}
    arrays |= {c: typed[c].astype(str).to_numpy(dtype=object).reshape(-1, 1) for c in features["categorical"]}
    for variant in (artifact.metadata.get("litert") or {}).get("variants") or {}:
        path = artifact.path / FILES[variant]
        started = time.perf_counter()
        lite = LiteModel.load(path)
        variant_load_ms = (time.perf_counter() - started) * 1000
        entry: dict[str, Any] = {
            "bytes": path.stat().st_size,
            "load_ms": round(variant_load_ms, 3),
            **_latency_ms(Predictor(artifact, lite, variant), one, LATENCY_REPEATS["litert"]),
        }
        if y is not None and scores is not None:
            variant_scores = shape_outputs(artifact.task, lite.predict(arrays))
            value = task_metrics(spec.task, y, variant_scores, artifact.classes).get(metric)
            entry["max_delta"] = max_difference(variant_scores, scores)
            entry["metric_delta"] = None if value is None or keras_value is None else value - keras_value
        variants[variant] = entry
    skipped = (artifact.metadata.get("litert") or {}).get("skipped") or {}
    return {"serving": choose_runtime(artifact.metadata), "metric": metric, "variants": variants, "skipped": skipped}


def _own_runtime(artifact: Any, load_ms: float, one: dict[str, list[Any]], metric: str) -> dict[str, Any]:
    """The one runtime of boosted trees (`xgboost`) or an ensemble (`ensemble`), measured as `runtime_tradeoff` says."""
    from fleetops.serving.predictor import ENSEMBLE, XGBOOST, Predictor
    from fleetops.training.trees import BOOSTER_FILE

    if artifact.kind == "gbt":
        runtime, size = XGBOOST, (artifact.path / BOOSTER_FILE).stat().st_size
    else:
        runtime = ENSEMBLE
        size = sum(f.stat().st_size for f in artifact.path.rglob("*") if f.is_file())
    # The model `load_artifact` loaded is what `Predictor.load` serves these kinds with.
    predictor = Predictor(artifact, artifact.model, runtime)
    entry: dict[str, Any] = {
        "bytes": size,
        "load_ms": round(load_ms, 3),
        **_latency_ms(predictor, one, LATENCY_REPEATS[runtime]),
    }
    if runtime == ENSEMBLE:
        entry["members"] = {name: member.runtime for name, member in artifact.model.members.items()}
    return {"serving": predictor.runtime, "metric": metric, "variants": {runtime: entry}, "skipped": {}}


def _latency_ms(predictor: Any, one: dict[str, list[Any]], repeats: int) -> dict[str, float]:
    """The first single-instance prediction (Keras traces its graph then) and the p50 of the next ones."""
    times = []
    for _ in range(1 + repeats):
        started = time.perf_counter()
        predictor.predict_columns(one)
        times.append(time.perf_counter() - started)
    return {"first_ms": round(times[0] * 1000, 4), "p50_ms": round(float(np.median(times[1:])) * 1000, 4)}


def register_shard(
    spec: FleetSpec,
    platform: Platform,
    model_dir: str | Path,
    evaluations: list[dict[str, Any]],
    model_uri: str | None = None,
    pipeline_job: str = "",
    serving_image: str | None = None,
) -> list[dict[str, Any]]:
    """Register each segment's model as a new version; move `champion` to it only when it won.

    The shard is one `upload_versions` call: on the local twin one transaction, so the
    shard is registered whole or not at all; on Vertex model by model (see
    `ModelRegistry.upload_versions`), and a rerun finds what was registered by identity.
    A model whose identity is already registered (a rerun on identical data) adds no
    version: its row says `created: False` and names the existing version.

    With `serving.cohosting: pool` the models are registered for Vertex's prebuilt TensorFlow
    container, the only kind Vertex co-hosts: each artifact first gets its SavedModel export
    (`fleetops.training.savedmodel`, about 0.4 s a model, so only then), and a custom
    `serving_image` is refused before anything is exported or registered.

    Boosted trees and ensembles are served by fleetops' own serving container only (`fleetops
    serve-container` in the fleetops image): Vertex's prebuilt TensorFlow one cannot load them, so
    registering one with it, or on a registry that needs an image without one, is refused
    (`_check_servable`), before anything is registered.
    """
    serving_image = _serving_image(spec, serving_image)
    _check_servable(spec, platform, model_dir, evaluations, serving_image)
    if spec.serving_pool:
        from fleetops.training.savedmodel import export_savedmodel

        for evaluation in evaluations:
            export_savedmodel(Path(model_dir) / segment_slug(evaluation["segment"]))
    requests = [
        _upload_request(spec, platform, model_dir, evaluation, model_uri, pipeline_job, serving_image)
        for evaluation in evaluations
    ]
    registrations = platform.registry.upload_versions(requests)
    results = []
    for evaluation, request, registration in zip(evaluations, requests, registrations, strict=True):
        promote = bool(evaluation["promote"])
        version = registration.version
        if promote and not registration.created and CHAMPION_ALIAS not in version.aliases:
            # An unchanged model still wins when the champion moved elsewhere since it was
            # registered; an existing version gets no aliases from the upload, so give them here.
            version = platform.registry.add_version_aliases(
                version.model_id, version.version_id, [CHAMPION_ALIAS, DEFAULT_ALIAS]
            )
        results.append(
            {
                "segment": evaluation["segment"],
                "model_id": version.model_id,
                "version_id": version.version_id,
                "resource_name": version.versioned_name,
                "created": registration.created,
                "promoted": promote,
                "aliases": list(version.aliases),
                "metric": evaluation["metric"],
                "value": evaluation["metrics"].get(evaluation["metric"]),
                "champion_version": evaluation.get("champion_version"),
                "champion_value": evaluation.get("champion_value"),
                # Why it was (not) promoted, for the summary's notes on undefined values.
                "reason": evaluation.get("reason"),
                "artifact_uri": version.artifact_uri,
                # What the segment serves (linear, dnn, gbt, ensemble, global_<architecture>), for the summary.
                "architecture": (request.lineage or {}).get("architecture"),
            }
        )
    return results


def _serving_image(spec: FleetSpec, serving_image: str | None) -> str | None:
    """The serving container to register with: the argument, else the spec's; Vertex's TensorFlow one for a pool."""
    image = serving_image or spec.registry.serving_image
    if not spec.serving_pool:
        return image
    if image and not is_prebuilt_tf_image(image):
        raise UserError(
            f"serving_image {image!r} is a custom container, and the fleet's spec says serving.cohosting: pool: "
            "Vertex co-hosts only models served by its prebuilt TensorFlow container; pass no serving_image "
            f"(fleetops then registers with {PREBUILT_TF_IMAGE}) or another prebuilt tf2-cpu image"
        )
    return image or PREBUILT_TF_IMAGE


def _check_servable(
    spec: FleetSpec, platform: Platform, model_dir: str | Path, evaluations: list[dict[str, Any]], image: str | None
) -> None:
    """Refuse to register a model that the serving container it would be registered with cannot serve.

    A Keras model is served by Vertex's prebuilt TensorFlow container (from its SavedModel) or by
    ours; boosted trees and ensembles only by ours, the fleetops image (`fleetops serve-container`
    loads them as `Predictor.load` does). So for those, `image` must be given where the registry
    needs one (Vertex), and must not be Vertex's TensorFlow container.
    """
    from fleetops.training.artifact import KINDS, read_metadata

    needed = platform.registry.requires_serving_image
    if not is_prebuilt_tf_image(image) and (image or not needed):
        return
    for evaluation in evaluations:
        segment = evaluation["segment"]
        metadata = read_metadata(Path(model_dir) / segment_slug(segment))
        kind = KINDS[metadata["format"]]
        if kind == "keras":
            continue
        what = "XGBoost boosted trees" if kind == "gbt" else "an ensemble of models"
        model = f"the model of segment {segment!r} (architecture {metadata.get('architecture', kind)}) is {what}"
        own = (
            "pass the fleetops image as the pipeline's serving_image (`fleetops submit --serving-image IMAGE`) "
            "or set registry.serving_image in the spec: its `fleetops serve-container` serves every kind"
        )
        if image:
            pool = "; and set serving.cohosting: none (a pool co-hosts only that container's models)"
            raise UserError(
                f"{model}, and the serving image {image} is Vertex's prebuilt TensorFlow container, which serves "
                f"only Keras models (their SavedModel) and cannot load it: {own}{pool if spec.serving_pool else ''}"
            )
        raise UserError(f"{model}, and no serving image was given, which the registry (Vertex) requires: {own}")


def _upload_request(
    spec: FleetSpec,
    platform: Platform,
    model_dir: str | Path,
    evaluation: dict[str, Any],
    model_uri: str | None,
    pipeline_job: str,
    serving_image: str | None,
) -> UploadRequest:
    """The registry upload of one segment's model: labels, lineage, its evaluation and the champion aliases.

    The model card (`fleetops.model_card`) is written into the artifact directory first, so it is
    registered with the version's bytes; its summary is the version's description and its JSON's
    sha256 the label `model-card-sha256`. The identity stays the model's (the card is no part of it);
    an artifact saved without one is identified by its bytes as they were before the card. A folder
    that is already a registered version's artifact keeps its card (`place_card`): its bytes are that
    version's.
    """
    from fleetops.fingerprints import directory_sha256
    from fleetops.model_card import (
        LABEL_MODEL_CARD_SHA256,
        build_card,
        card_sha256,
        card_summary,
        place_card,
        remove_card,
    )
    from fleetops.training.artifact import read_metadata

    segment = evaluation["segment"]
    slug = segment_slug(segment)
    artifact = Path(model_dir) / slug
    metadata = read_metadata(artifact)
    promote = bool(evaluation["promote"])
    artifact_uri = f"{model_uri.rstrip('/')}/{slug}" if model_uri else None
    identity = metadata.get(METADATA_IDENTITY)
    if identity is None:
        remove_card(artifact)  # an earlier run's: the bytes as saved are the identity of an artifact without one
        identity = directory_sha256(artifact)
    card = build_card(
        spec, metadata, evaluation, identity=identity, artifact_uri=artifact_uri, pipeline_job=pipeline_job
    )

    def registered_here() -> bool:
        """Whether a version's artifact is this very folder (on Vertex: a run's folder, registered in place)."""
        if not artifact_uri:
            return False
        try:
            versions = platform.registry.list_versions(evaluation["model_id"])
        except NotFoundError:
            return False
        return any(v.artifact_uri.rstrip("/") == artifact_uri for v in versions)

    card = place_card(artifact, card, registered_here)
    labels = {
        **spec.registry.labels,
        LABEL_FLEET: spec.name,
        LABEL_SEGMENT: label_value(segment),
        LABEL_ARCHITECTURE: metadata["architecture"],
        LABEL_MANAGED_BY: "fleetops",
        LABEL_MODEL_CARD_SHA256: card_sha256(card),
    }
    lineage = {
        "pipeline_job": pipeline_job,
        "data_sha256": metadata["data_sha256"],
        "spec_sha256": metadata["spec_sha256"],
        "architecture": metadata["architecture"],
        "hyperparameters": metadata["hyperparameters"],
        "rows": metadata["rows"],
        "primary_metric": evaluation["metric"],
        "test_value": evaluation["metrics"].get(evaluation["metric"]),
        "champion_value": evaluation.get("champion_value"),
        "tuning": _tuning_lineage(metadata.get("tuning")),
        # How it was trained: packed or one at a time, from scratch or warm-started from the global model,
        # or the global model itself standing in for this segment (and why).
        "trainer": metadata.get("trainer"),
        "transfer": metadata.get("transfer"),
        "fallback": metadata.get("fallback"),
        # Which candidate was chosen and why, with each one's values (`fleetops models` shows it).
        "selection": _selection_lineage(metadata.get("selection")),
        # Keras against LiteRT (bytes, load ms, p50 ms, metric change), for cost estimates; why a
        # variant is missing stays in the evaluation and the artifact (the lineage is kept short).
        "runtimes": {k: v for k, v in evaluation["runtimes"].items() if k != "skipped"}
        if evaluation.get("runtimes")
        else None,
    }
    schema_uri = CLASSIFICATION_SCHEMA if spec.task.is_classification else REGRESSION_SCHEMA
    return UploadRequest(
        evaluation["model_id"],
        artifact,
        artifact_uri=artifact_uri,
        display_name=f"{spec.name} {segment}"[:128],
        description=card_summary(card),
        labels=labels,
        aliases=[CHAMPION_ALIAS] if promote else [],
        is_default_version=promote,
        lineage=lineage,
        serving_image=serving_image,
        evaluation=EvaluationInput(
            metrics_schema_uri=schema_uri,
            metrics=json_safe(evaluation["metrics"]),
            display_name=f"{pipeline_job or 'evaluation'}-{slug}"[:128],
            slices=json_safe(evaluation["slices"]),
        ),
        # Artifacts saved before identities existed have none: their bytes before the card stand in.
        identity=identity,
    )


def failed_rows(spec: FleetSpec, failed: dict[str, str]) -> list[dict[str, Any]]:
    """Summary rows for segments whose training failed: nothing registered, the reason kept."""
    return [
        {"segment": name, "model_id": model_id(spec.name, name), "failed": reason, "promoted": False}
        for name, reason in sorted(failed.items())
    ]


def check_failures(spec: FleetSpec, registrations: list[dict[str, Any]], segments: dict[str, Any]) -> None:
    """Fail the run when more segments were skipped or failed than `segment_failures.max_failed_fraction`."""
    failed = [r["segment"] for r in registrations if r.get("failed")]
    lost = len(failed) + len(segments.get("skipped", {}))
    total = len(registrations) + len(segments.get("skipped", {}))
    limit = spec.segment_failures.max_failed_fraction
    if spec.segment_failures.too_many(lost, total):
        raise UserError(
            f"{lost} of {total} segment(s) ({lost / total:.0%}) were skipped or failed, more than "
            f"segment_failures.max_failed_fraction {limit:g}; failed in training: {failed[:10]}"
        )


def _selection_lineage(selection: dict[str, Any] | None) -> dict[str, Any] | None:
    """What lineage keeps of the trainer's choice: chosen, why, each candidate's values and who failed (not why).

    The failures' messages stay in the artifact and the evaluation report: a version's lineage is kept short.
    """
    if not selection:
        return None

    def rounded(value: Any) -> Any:
        return round(float(value), 4) if isinstance(value, (int, float)) and math.isfinite(value) else None

    candidates = {}
    for name, values in (selection.get("candidates") or {}).items():
        kept = {"validation": rounded(values.get("validation")), "test": rounded(values.get("test"))}
        if values.get("architecture"):
            kept["architecture"] = values["architecture"]
        candidates[name] = kept
    return {
        "metric": selection.get("metric"),
        "chosen": selection.get("chosen"),
        "reason": selection.get("reason"),
        "candidates": candidates,
        "failed": sorted(selection.get("failed") or {}),
    }


def _tuning_lineage(tuning: dict[str, Any] | None) -> dict[str, Any] | None:
    """What lineage keeps of a tuning study: the winner and the trial counts (the full table is in the artifact)."""
    if not tuning:
        return None
    trials = tuning.get("trials", [])
    return {
        "scope": tuning.get("scope"),
        "best_parameters": tuning.get("best_parameters"),
        "best_value": tuning.get("best_value"),
        "trials": len(trials),
        "failed_trials": sum(t["state"] != "SUCCEEDED" for t in trials),
    }


def _slices(
    spec: FleetSpec, test: pd.DataFrame, y: np.ndarray, scores: np.ndarray, classes: list[str]
) -> list[dict[str, Any]]:
    """Metrics per value of each slice column (Vertex evaluation slices), on slices big enough to mean something."""
    slices = []
    for column in spec.evaluation.slice_columns:
        values = test[column].where(test[column].notna(), "").astype(str).to_numpy()
        for value in sorted(set(values)):
            mask = values == value
            if mask.sum() < MIN_SLICE_ROWS:
                continue
            metrics = task_metrics(spec.task, y[mask], scores[mask], classes)
            undefined = undefined_reasons(metrics, y[mask], classes, f"slice {column}={value}")
            slices.append(
                {
                    "feature": column,
                    "value": value,
                    "rows": int(mask.sum()),
                    "metrics": headline(metrics),
                    "undefined": undefined,
                }
            )
    return slices


def _champion(
    spec: FleetSpec,
    platform: Platform,
    test: pd.DataFrame,
    mid: str,
    metrics: dict[str, Any],
    undefined: dict[str, str],
    validation: dict[str, Any],
) -> dict[str, Any]:
    """Whether the new model takes the `champion` alias, and why, in one sentence.

    The rule, on the primary metric over the segment's test rows (both models scored on the same rows):

    - A champion that can score the data defends its title: the new model is promoted only
      when its value beats the champion's by more than `promote_if_better_by`.
    - The new value is undefined (e.g. a binary test split with one class) and a champion
      exists: not promoted, and the champion keeps serving. On one-class rows the champion's
      value is undefined too, so nothing shows the new model is better, and replacing a
      serving model takes evidence. No other metric stands in: the spec chose this one.
    - No champion yet (or one that cannot score the current data): the new model becomes the
      champion when its value is defined. When it is undefined, it still becomes the first
      champion if its primary metric on the validation split or the test split's fallback
      metric (`FALLBACK_METRIC`: logLoss, or RMSE for regression, defined with one class) is
      defined: without a champion the segment serves no model at all, and a later run with a
      defined test metric replaces it by the ordinary rule. If none is defined (the model's
      outputs are not finite), it is not promoted.

    Args:
        spec: The fleet spec (primary metric, goal, margin).
        platform: Where the registry is.
        test: The segment's test rows.
        mid: The segment's model id.
        metrics: The new model's test metrics.
        undefined: Why each of the new model's undefined test metrics is undefined.
        validation: The new model's validation metrics (from its artifact's metadata).

    Returns:
        champion_version, champion_value (its primary metric on `test`), promote, reason.
    """
    from fleetops.training.artifact import load_artifact
    from fleetops.training.segments import encode_labels

    metric = spec.primary_metric
    value = metrics.get(metric)
    why_undefined = undefined.get(metric, f"{metric} is undefined")
    try:
        champion = platform.registry.get_version(mid, CHAMPION_ALIAS)
    except NotFoundError:
        promote, reason = _first_champion(spec, "the segment has no champion", metrics, why_undefined, validation)
        return {"champion_version": None, "champion_value": None, "promote": promote, "reason": reason}
    if test.empty:
        reason = (
            f"not promoted: {why_undefined}, so nothing shows it beats champion v{champion.version_id}, which stays"
        )
        return {"champion_version": champion.version_id, "champion_value": None, "promote": False, "reason": reason}
    try:
        loaded = load_artifact(platform.registry.artifact_path(champion))
        y = encode_labels(test[spec.label], loaded.classes)
        champion_metrics = task_metrics(spec.task, y, loaded.scores(test), loaded.classes)
    except UserError as exc:
        # A champion that cannot score today's data (features changed) cannot defend its title.
        situation = f"champion v{champion.version_id} cannot score the current data: {exc}"
        promote, reason = _first_champion(spec, situation, metrics, why_undefined, validation)
        return {"champion_version": champion.version_id, "champion_value": None, "promote": promote, "reason": reason}
    champion_value = champion_metrics.get(metric)
    champion_why = undefined_reasons(champion_metrics, y, loaded.classes, "the same test rows")
    promote, reason = _challenge(
        spec, champion.version_id, value, why_undefined, champion_value, champion_why.get(metric, "")
    )
    return {
        "champion_version": champion.version_id,
        "champion_value": champion_value,
        "promote": promote,
        "reason": reason,
    }


def _fairness_gate(spec: FleetSpec, result: dict[str, Any]) -> dict[str, Any]:
    """The champion decision after the spec's fairness gates (`evaluation.fairness`).

    A model that breaks a gate (|metric| strictly above max_abs on some value of the slice column)
    does not take the champion alias, whatever its primary metric says; it is still registered. The
    reason names each broken gate with its worst value (and how many others break it) and keeps the
    primary-metric rule's reason. Slices where a gate's
    metric is undefined cannot break it; `fairness.gates` lists them as not checked, with why.
    """
    checks = fairness.check_gates(result.get("fairness"), spec.evaluation.fairness)
    report = (result.get("fairness") or {}) | {"gates": checks}
    broken = [check for check in checks if check["broken"]]
    if not broken:
        return {"fairness": report}
    # The worst breach of each gate, so that a column with many values keeps the reason short.
    worst: dict[str, list[dict[str, Any]]] = {}
    for check in broken:
        worst.setdefault(check["gate"], []).append(check)
    breaches = "; ".join(
        f"{gate}: {max(checks, key=lambda c: abs(c['measured']))['note']}"
        + (f", and {len(checks) - 1} more value(s) of {checks[0]['slice']}" if len(checks) > 1 else "")
        for gate, checks in worst.items()
    )
    if not result["promote"]:
        return {"fairness": report, "reason": f"{result['reason']}; it also breaks the fairness gate ({breaches})"}
    champion = result.get("champion_version")
    stays = f"champion v{champion} stays" if champion else "the segment has no champion until a model passes"
    reason = f"not promoted: breaks the fairness gate ({breaches}), so {stays} (without the gate: {result['reason']})"
    return {"fairness": report, "promote": False, "reason": reason}


def _first_champion(
    spec: FleetSpec, situation: str, metrics: dict[str, Any], why_undefined: str, validation: dict[str, Any]
) -> tuple[bool, str]:
    """The rule without a champion to defend: promote on the test value, else on the fallback evidence."""
    metric = spec.primary_metric
    value = metrics.get(metric)
    if value is not None:
        return True, f"{situation}; new {metric} {value:.4f} makes it the first champion"
    evidence = {f"validation {metric}": validation.get(metric)}
    fallback = FALLBACK_METRIC[spec.task]
    if fallback != metric:
        evidence[f"test {fallback}"] = metrics.get(fallback)
    defined = {name: v for name, v in evidence.items() if v is not None}
    if defined:
        shown = " and ".join(f"{name} {v:.4f}" for name, v in defined.items())
        return True, (
            f"{situation} and {why_undefined}; promoted as the first champion on {shown}, "
            "so that the segment has a model to serve"
        )
    verb = "is" if len(evidence) == 1 else "are"
    return False, (
        f"not promoted: {why_undefined}; {' and '.join(evidence)} {verb} undefined too, so nothing shows "
        f"the model works ({situation})"
    )


def _challenge(
    spec: FleetSpec,
    champion_version: str,
    value: float | None,
    why_undefined: str,
    champion_value: float | None,
    champion_why_undefined: str,
) -> tuple[bool, str]:
    """The rule against a champion that could score the same test rows."""
    metric, margin = spec.primary_metric, spec.evaluation.promote_if_better_by
    if value is None:
        return False, (
            f"not promoted: {why_undefined}, so nothing shows the new model beats champion v{champion_version}, "
            "which stays champion"
        )
    if champion_value is None:
        # Same rows, so the class mix is not the cause: the champion's outputs are not finite.
        return True, f"champion v{champion_version}: {champion_why_undefined}; new {metric} {value:.4f} takes over"
    promote = is_better(value, champion_value, spec.metric_goal, margin)
    verdict = "beats" if promote else "does not beat"
    return promote, (
        f"new {metric} {value:.4f} {verdict} champion v{champion_version} {champion_value:.4f} by more than {margin}"
    )
