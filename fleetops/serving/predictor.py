"""Turn JSON instances into predictions with a loaded model artifact.

`columns` validates a request's instances (each an object of feature values)
and returns them column-wise; every mistake is a `UserError` naming the
instance, the feature and the value. A number the model's float32 inputs
cannot hold is such a mistake: cast, it would become inf and the scores NaN.
`Predictor.predict_columns` scores column-wise input straight into the model's
named inputs (no DataFrame on the hot path), `check_finite` refuses outputs
that are not finite (no response carries a NaN, a JSON null, as a score) and
`format_predictions` shapes the output as Vertex tabular models do:
`{"classes": [...], "scores": [...]}` or `{"value": v}`.

A predictor scores through the model's LiteRT flatbuffer when the artifact has
one and its metadata allows it (`choose_runtime`), else through the Keras model;
the Keras model is then loaded only if `:explain` needs it. Boosted trees score
through their XGBoost booster (`fleetops.training.trees.TreeModel`), ensembles
through their members (`fleetops.training.ensemble.EnsembleModel`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from fleetops.errors import FleetopsError, UserError
from fleetops.fingerprints import directory_sha256
from fleetops.training.artifact import ModelArtifact, load_artifact, shape_outputs

MAX_INSTANCES = 10_000
# The models' numeric inputs are float32: a finite float64 beyond this magnitude becomes inf (and the
# scores NaN) in the cast, so it is bad input, whether it comes in a request or a batch row.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def bucket_size(n: int) -> int:
    """The power of two at or above `n`: the batch shapes the model is traced for."""
    return 1 << max(n - 1, 0).bit_length()


class ArtifactIntegrityError(UserError):
    """A stored artifact's bytes no longer match the sha256 the registry recorded."""


class ModelOutputError(FleetopsError, RuntimeError):
    """The model's output is not finite where the input is not to blame: a fault of the model (a 500)."""


KERAS = "keras"
XGBOOST = "xgboost"
ENSEMBLE = "ensemble"
RUNTIMES = ("keras", "litert", "litert_quantized")
# Overrides every artifact's recorded `serving.runtime` in this process (e.g. keras, to rule LiteRT out).
RUNTIME_VARIABLE = "FLEETOPS_SERVING_RUNTIME"


def choose_runtime(metadata: dict[str, Any], runtime: str | None = None) -> str:
    """What serves a model: `keras`, or the LiteRT variant (`float32`, `int8`) its metadata vouches for.

    The runtime asked for is `runtime`, else `$FLEETOPS_SERVING_RUNTIME`, else the spec's
    `serving.runtime` recorded at training (`litert` for artifacts that predate it):

    - `keras`: the Keras model.
    - `litert`: the float32 flatbuffer, if its scores were within `AGREEMENT_TOLERANCE` of the
      Keras model's on the validation and probe rows; else the Keras model.
    - `litert_quantized`: the int8 flatbuffer if there is one and its validation metric dropped by
      at most `serving.quantized_max_metric_drop`; else as `litert`.

    An artifact without flatbuffers (trained before them, or not exportable) is served with Keras,
    and so is one whose flatbuffers were checked against another model than the one it holds (its
    identity differs: a model saved again with other weights under copied metadata).
    """
    from fleetops.names import METADATA_IDENTITY
    from fleetops.training.litert import AGREEMENT_TOLERANCE, FLOAT32, INT8

    policy = metadata.get("serving") or {}
    runtime = runtime or os.environ.get(RUNTIME_VARIABLE) or policy.get("runtime") or "litert"
    if runtime not in RUNTIMES:
        raise UserError(f"serving runtime {runtime!r} is not one of {list(RUNTIMES)}")
    lite = metadata.get("litert") or {}
    if lite.get("identity_sha256") is None or lite["identity_sha256"] != metadata.get(METADATA_IDENTITY):
        return KERAS
    variants = lite.get("variants") or {}
    if runtime == "litert_quantized" and INT8 in variants:
        drop = variants[INT8].get("metric_drop")
        if drop is not None and drop <= float(policy.get("quantized_max_metric_drop", 0.0)):
            return INT8
    if runtime != KERAS and FLOAT32 in variants and variants[FLOAT32]["max_delta"] <= AGREEMENT_TOLERANCE:
        return FLOAT32
    return KERAS


class Predictor:
    """Scores column-wise instances with a model artifact, through `lite` or the artifact's Keras model.

    `lite` is a model that takes named (n, 1) numpy inputs: a LiteRT interpreter, a boosted-trees
    booster or an ensemble. `runtime` names what scores: `keras`, the LiteRT variant (`float32`,
    `int8`), `xgboost` or `ensemble`.
    """

    def __init__(self, artifact: ModelArtifact, lite: Any = None, runtime: str = KERAS):
        self.artifact = artifact
        self.numeric = list(artifact.features["numeric"])
        self.categorical = list(artifact.features["categorical"])
        self.features = self.numeric + self.categorical
        self._feature_set = frozenset(self.features)
        self.classes = list(artifact.classes)
        self.task = artifact.task
        self.lite = lite
        self.runtime = runtime if lite is not None else KERAS

    @classmethod
    def load(cls, path: str | Path, expected_sha256: str | None = None, runtime: str | None = None) -> Predictor:
        """Load an artifact; refuse it when its bytes do not match `expected_sha256`.

        `runtime` (`keras`, `litert`, `litert_quantized`) overrides what the artifact records (see
        `choose_runtime`). Served through LiteRT, the Keras model is not loaded until something asks
        for it (`:explain`).
        """
        if expected_sha256 is not None:
            actual = directory_sha256(path)
            if actual != expected_sha256:
                raise ArtifactIntegrityError(
                    f"model artifact {str(path)!r} has sha256 {actual[:16]}..., but the registry recorded "
                    f"{expected_sha256[:16]}...: the files changed after registration; refusing to serve them"
                )
        from fleetops.training.litert import FILES

        artifact = load_artifact(path, keras_model=False)
        if artifact.kind != KERAS:  # trees or an ensemble: their own model is light; loaded now, so it fails here
            return cls(artifact, artifact.model, XGBOOST if artifact.kind == "gbt" else ENSEMBLE)
        variant = choose_runtime(artifact.metadata, runtime)
        if variant != KERAS and not (Path(path) / FILES[variant]).is_file():
            variant = KERAS  # recorded but not there (a copy without it): the Keras model still serves
        if variant == KERAS:
            artifact.model  # noqa: B018  loaded now: a broken Keras model fails the load, not the first request
            return cls(artifact)
        from fleetops.serving.lite import LiteModel

        return cls(artifact, LiteModel.load(Path(path) / FILES[variant]), variant)

    def columns(self, instances: Any) -> dict[str, list[Any]]:
        """Validate instances and return them as one list per feature."""
        if not isinstance(instances, list) or not instances:
            raise UserError("'instances' must be a non-empty list of objects (feature name -> value)")
        if len(instances) > MAX_INSTANCES:
            raise UserError(f"{len(instances)} instances in one request; at most {MAX_INSTANCES} are allowed")
        for index, instance in enumerate(instances):
            if not isinstance(instance, dict):
                kind = type(instance).__name__
                raise UserError(f"instance {index} must be an object of feature values, got {kind}: {instance!r:.80}")
            if instance.keys() != self._feature_set:
                self._explain_keys(index, instance)
        columns = {name: [instance[name] for instance in instances] for name in self.features}
        for name in self.numeric:
            for index, value in enumerate(columns[name]):
                if value is None:
                    continue
                if type(value) not in (int, float):
                    raise UserError(f"instance {index} feature {name!r} must be a number or null, got {value!r:.80}")
                if not -FLOAT32_MAX <= value <= FLOAT32_MAX:  # also inf and NaN, which plain JSON cannot carry
                    raise UserError(
                        f"instance {index} feature {name!r} is {value!r:.80}, outside the range the model takes: "
                        f"{-FLOAT32_MAX!r} to {FLOAT32_MAX!r} (float32)"
                    )
        for name in self.categorical:
            for index, value in enumerate(columns[name]):
                if value is not None and type(value) is not str:
                    raise UserError(f"instance {index} feature {name!r} must be a string or null, got {value!r:.80}")
        return columns

    def predict_columns(self, columns: dict[str, list[Any]]) -> np.ndarray:
        """Raw model outputs for column-wise input: (n, k) probabilities or (n,) values."""
        n = len(columns[self.features[0]])
        if self.lite is not None:  # no tracing, so no padding to a few shapes
            from fleetops.serving.lite import input_arrays

            return shape_outputs(self.task, self.lite.predict(input_arrays(self.numeric, self.categorical, columns)))
        return self.score_tensors(self.tensors(columns, pad_to=bucket_size(n)))[:n]

    def predict_arrays(self, arrays: dict[str, Any]) -> np.ndarray:
        """Shaped outputs for named (n, 1) numpy inputs; the Keras model gets them padded to `bucket_size`."""
        if self.lite is not None:
            return shape_outputs(self.task, self.lite.predict(arrays))
        import tensorflow as tf

        n = len(next(iter(arrays.values())))
        extra = bucket_size(n) - n
        inputs = {}
        for name in self.features:
            array = np.asarray(arrays[name])
            if extra:
                array = np.concatenate([array, np.repeat(array[:1], extra, axis=0)])
            categorical = name in self.categorical
            inputs[name] = tf.constant(array.astype(str) if categorical else array.astype(np.float32))
        return self.score_tensors(inputs)[:n]

    def tensors(self, columns: dict[str, list[Any]], pad_to: int | None = None) -> dict[str, Any]:
        """The Keras model's named input tensors; padded (repeating the first row) to `pad_to` rows.

        Padding is done on the Python lists: as tensor ops it costs several times the request.
        """
        import tensorflow as tf

        n = len(columns[self.features[0]])
        extra = (pad_to or n) - n
        inputs = {}
        for name in self.numeric:
            values = [np.nan if v is None else v for v in columns[name]]
            values += values[:1] * extra
            inputs[name] = tf.constant(np.array(values, dtype=np.float32).reshape(n + extra, 1))
        for name in self.categorical:
            values = ["" if v is None else v for v in columns[name]]
            values += values[:1] * extra
            inputs[name] = tf.constant(values, dtype=tf.string, shape=(n + extra, 1))
        return inputs

    def score_tensors(self, inputs: dict[str, Any]) -> np.ndarray:
        """Model outputs for named input tensors (or numpy arrays): (n, k) probabilities or (n,) values.

        Keras traces a graph per input shape, so callers pad batches to `bucket_size`:
        a handful of shapes instead of one per batch size.
        """
        if self.lite is not None:
            from fleetops.serving.lite import as_arrays

            return shape_outputs(self.task, self.lite.predict(as_arrays(inputs)))
        return shape_outputs(self.task, np.asarray(self.artifact.model.predict_on_batch(inputs)))

    def check_finite(self, outputs: np.ndarray, columns: dict[str, list[Any]]) -> None:
        """Refuse outputs that are not finite: as JSON they would be null scores in a 200.

        In-range numbers can still overflow inside the network (a huge value times a weight).
        The first such instance is scored again with its numeric features left out (the model
        imputes them): finite then, its numbers are to blame, a `UserError` naming the instance
        and its values; still not finite, the model is faulty, a `ModelOutputError`.
        """
        rows = outputs.reshape(len(outputs), -1)
        not_finite = np.flatnonzero(~np.isfinite(rows).all(axis=1))
        if not not_finite.size:
            return
        index = int(not_finite[0])
        numbers = {name: columns[name][index] for name in self.numeric}
        probe = {name: [None] if name in numbers else [columns[name][index]] for name in self.features}
        if np.isfinite(self.predict_columns(probe)).all():
            raise UserError(
                f"instance {index}: the model's output is not a finite number for its numeric values {numbers}: "
                "they are too large for the model's float32 arithmetic (left out, the instance scores)"
            )
        raise ModelOutputError(
            f"the model's output is not a finite number for instance {index}, even with its numeric features "
            "left out: the model itself is faulty (its weights or its preprocessing)"
        )

    def format_predictions(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        # tolist() gives the Python floats float() gives, element by element: 100 rows in 12 us, not 92 (measured).
        if self.task == "regression":
            return [{"value": v} for v in outputs.reshape(-1).tolist()]
        classes = self.classes
        return [{"classes": classes, "scores": row} for row in outputs.tolist()]

    def _explain_keys(self, index: int, instance: dict[str, Any]) -> None:
        problems = []
        if missing := sorted(self._feature_set - instance.keys()):
            problems.append(f"is missing feature(s) {missing}")
        if extra := sorted(instance.keys() - self._feature_set):
            problems.append(f"has unknown feature(s) {extra}")
        raise UserError(f"instance {index} {' and '.join(problems)}; the model's features are {self.features}")
