"""Explanations for every kind of fleetops model, in Vertex's `Explanation` shape.

`explain(predictor, columns)` is the one entry point (`:explain`, and anything else that explains):
it picks the method by the artifact's kind, and every kind's attributions are in the same units,
the model's output (the explained class's probability, or the regression value), so that the
attributions of a fleet whose segments have different architectures can be compared. The
explained output is the positive class (binary), the top class (multiclass) or the value
(regression). By completeness, each instance's attributions sum to
`instanceOutputValue - baselineOutputValue`; `approximationError` is how far off that sum is,
relative to the difference. Attributions that are not finite (an instance's huge values
overflowing the arithmetic) are refused, never returned as JSON nulls.

Keras models (`integrated_gradients`): raw features are strings and NaNs, which have no
gradient, so attributions are computed in the model's encoded space (each numeric feature
normalised, each categorical one-hot) and summed back per feature. The baseline is the all-zero
encoding: every numeric feature at its training mean, every categorical feature with no
category. The integral is a Riemann sum, so completeness holds approximately.

Boosted trees (gbt): exact TreeSHAP from XGBoost (`TreeModel.shap`), whose baseline is the bias
column, the model's expected margin over its training data. For regression that is all: the
link is the identity, the attributions are TreeSHAP's and exact, and the baseline is the
expected value. For classification TreeSHAP is exact in log-odds/logit (margin) space, and is
brought to the output's units: each feature's margin contribution to the explained output k is
rescaled by `(p_k(x) - p_k(base)) / (m_k(x) - m_k(base))`, where m are the margins (m(base) the
bias column, m(x) the bias plus every feature's contribution) and p the sigmoid (binary) or the
softmax (multiclass) of margins; so the attributions sum exactly (up to float error) to
`instanceOutputValue - baselineOutputValue`, with `p_k(base)` the baseline. When
`m_k(x) == m_k(base)` the link's derivative takes the ratio's place: `p(1 - p)` for the sigmoid,
the k-th diagonal derivative `p_k(1 - p_k)` of the softmax. The shares are TreeSHAP's, the scale
is the output's. For multiclass the rescaling sees only the explained class's own margin, while
the other classes' margins move `p_k` too: the ratio is then not the sigmoid's (0, 1/4] but can
be large or negative (a feature that raised class k's margin attributed a fall of `p_k`, when
the others' margins rose more). On the sample data (4 regions x 600 rows, plan as the label) it
ran from -16 to 8, and 14 of 2,400 rows had an attribution beyond +-1. Where the explained
margin does not move at all while another does, no rescaling sums to `p_k`'s change;
`approximationError` then says so.

Ensembles: the weighted sum of their members' attributions, each member explained by its own
kind's method in output units, for the ensemble's explained output. By completeness the sum is
the ensemble's output minus the weighted sum of the members' baselines, which is its
`baselineOutputValue`. Members take the ensemble's fixed features (`EnsembleModel.with_fixed`),
which requests do not carry: their attributions are not reported but folded into
`baselineOutputValue`, so completeness holds over the request's features. The ensemble's
`approximationError` is its members' (their weighted misses of completeness, relative to the
ensemble's difference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fleetops.errors import UserError
from fleetops.serving.predictor import ModelOutputError, Predictor

DEFAULT_STEPS = 50
MAX_STEPS = 100
CHUNK_INSTANCES = 1024  # x DEFAULT_STEPS: 51,200 path rows per gradient pass, tens of MB; 256 was 2x slower
_OUTPUT_LAYERS = ("probability", "probabilities", "scaled_value", "value")


@dataclass
class Attributions:
    """Raw explanations of n instances: what `_explanation` turns into Vertex's shape.

    `values` are per feature of `features` (n, features); `target` the explained output per
    instance; `instance` and `baseline` the explained output at the instance and at the baseline;
    `folded` the attributions of features not reported (an ensemble's fixed features), which
    `baselineOutputValue` takes in.
    """

    features: list[str]
    values: np.ndarray
    target: np.ndarray
    instance: np.ndarray
    baseline: np.ndarray
    folded: np.ndarray


def explain(
    predictor: Predictor,
    columns: dict[str, list[Any]],
    steps: int = DEFAULT_STEPS,
    chunk_instances: int = CHUNK_INSTANCES,
) -> list[dict[str, Any]]:
    """One Vertex `Explanation` per instance (`{"attributions": [Attribution]}`), for any kind of model.

    `columns` are validated instances (`Predictor.columns`); `steps` is integrated gradients'
    step count (Keras models and Keras members of ensembles). Instances are explained
    `chunk_instances` at a time: integrated gradients' path has `steps` rows per instance, and
    the gradient tape keeps every layer's activations for all of them, so memory follows the
    chunk, not the request (10,000 instances at once took GBs).
    """
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise UserError(f"integrated gradients step_count {steps!r} must be an integer from 1 to {MAX_STEPS}")
    if not isinstance(chunk_instances, int) or chunk_instances < 1:
        raise ValueError(f"chunk_instances must be a positive integer, got {chunk_instances!r}")
    from fleetops.serving.lite import input_arrays

    total = len(columns[predictor.features[0]])
    explanations = []
    for first in range(0, total, chunk_instances):
        chunk = {name: values[first : first + chunk_instances] for name, values in columns.items()}
        attributed = attribute(predictor, input_arrays(predictor.numeric, predictor.categorical, chunk), steps)
        _check_finite(predictor, chunk, first, attributed)
        explanations += [_explanation(predictor, attributed, i) for i in range(len(attributed.target))]
    return explanations


def integrated_gradients(
    predictor: Predictor,
    columns: dict[str, list[Any]],
    steps: int = DEFAULT_STEPS,
    chunk_instances: int = CHUNK_INSTANCES,
) -> list[dict[str, Any]]:
    """`explain` for a Keras model; refuses other kinds (use `explain`, which picks the method)."""
    if predictor.artifact.kind != "keras":
        raise ValueError(f"integrated gradients explain Keras models; this is a {predictor.artifact.kind} model")
    return explain(predictor, columns, steps, chunk_instances)


def attribute(
    predictor: Predictor, arrays: dict[str, np.ndarray], steps: int = DEFAULT_STEPS, target: np.ndarray | None = None
) -> Attributions:
    """Attributions in output units for named (n, 1) inputs, by the artifact's kind; `target` the outputs explained."""
    kind = predictor.artifact.kind
    if kind == "keras":
        return _integrated_gradients(predictor, arrays, steps, target)
    if kind == "gbt":
        return _tree_shap(predictor, arrays, target)
    if kind == "ensemble":
        return _ensemble(predictor, arrays, steps, target)
    raise ValueError(f"no explanation method for model kind {kind!r}")


def _integrated_gradients(
    predictor: Predictor, arrays: dict[str, np.ndarray], steps: int, target: np.ndarray | None
) -> Attributions:
    import keras
    import tensorflow as tf

    model = predictor.artifact.model
    encoders = [model.get_layer(f"norm_{f}") for f in predictor.numeric]
    encoders += [model.get_layer(f"vocab_{f}") for f in predictor.categorical]
    encode = keras.Model(model.inputs, [layer.output for layer in encoders])
    widths = [int(layer.output.shape[-1]) for layer in encoders]
    starts = np.cumsum([0, *widths[:-1]])  # each feature's first column in the encoded space

    def head(flat: tf.Tensor) -> tf.Tensor:
        parts = tf.split(flat, widths, axis=1)
        h = model.get_layer("features")(parts) if len(parts) > 1 else parts[0]
        for layer in model.layers:
            if layer.name.startswith("hidden_"):
                h = layer(h)
            elif layer.name.startswith("dropout_"):
                h = layer(h, training=False)
            elif layer.name in _OUTPUT_LAYERS:
                h = layer(h)
        return h

    inputs = {name: tf.constant(np.asarray(arrays[name], dtype=np.float32)) for name in predictor.numeric}
    inputs |= {name: tf.constant(np.asarray(arrays[name]).astype(str)) for name in predictor.categorical}
    n = len(inputs[predictor.features[0]])
    x = tf.concat([tf.cast(t, tf.float32) for t in encode(inputs)], axis=1)  # (n, d)
    outputs = head(x).numpy()
    target = _target_index(predictor.task, outputs) if target is None else np.asarray(target, dtype=int)
    baseline = tf.zeros_like(x)
    alphas = tf.reshape((tf.range(steps, dtype=tf.float32) + 0.5) / steps, (steps, 1, 1))
    path = baseline[None] + alphas * (x - baseline)[None]  # (steps, n, d)
    flat_path = tf.reshape(path, (-1, x.shape[1]))
    with tf.GradientTape() as tape:
        tape.watch(flat_path)
        out = head(flat_path)
        picked = _pick(out, np.tile(target, steps))
    grads = tf.reshape(tape.gradient(picked, flat_path), (steps, n, -1))
    attributions = ((x - baseline) * tf.reduce_mean(grads, axis=0)).numpy()
    return Attributions(
        features=predictor.features,
        values=np.add.reduceat(attributions, starts, axis=1).astype(np.float64),  # (n, features)
        target=target,
        instance=_pick(tf.constant(outputs), target).numpy().astype(np.float64),
        baseline=_pick(head(baseline), target).numpy().astype(np.float64),
        folded=np.zeros(n),
    )


def _tree_shap(predictor: Predictor, arrays: dict[str, np.ndarray], target: np.ndarray | None) -> Attributions:
    """TreeSHAP, exact in margin space, rescaled to the output's units (see the module's docstring)."""
    trees = predictor.artifact.model
    contributions = trees.shap(trees.matrix(arrays))  # (n, outputs, features + 1), float64
    bias, per_feature = contributions[:, :, -1], contributions[:, :, :-1]
    moved = per_feature.sum(axis=2)  # m(x) - m(base) per output: (n, outputs)
    n, rows = len(contributions), np.arange(len(contributions))
    features = trees.numeric + trees.categorical
    if predictor.task == "regression":
        values, baseline, instance = per_feature[:, 0, :], bias[:, 0], bias[:, 0] + moved[:, 0]
        return Attributions(features, values, np.zeros(n, dtype=int), instance, baseline, np.zeros(n))
    if predictor.task == "binary_classification":
        target = np.ones(n, dtype=int)
        p_base, p = _sigmoid(bias[:, 0]), _sigmoid(bias[:, 0] + moved[:, 0])
        picked, moved = per_feature[:, 0, :], moved[:, 0]
    else:
        probabilities = _softmax(bias + moved)
        target = probabilities.argmax(axis=1) if target is None else np.asarray(target, dtype=int)
        p_base, p = _softmax(bias)[rows, target], probabilities[rows, target]
        picked, moved = per_feature[rows, target, :], moved[rows, target]
    return Attributions(features, picked * _output_scale(moved, p, p_base)[:, None], target, p, p_base, np.zeros(n))


def _output_scale(moved: np.ndarray, p: np.ndarray, p_base: np.ndarray) -> np.ndarray:
    """Margin to output units: `(p - p_base) / moved`, or the link's slope `p(1 - p)` where the margin stayed."""
    still = moved == 0
    return np.where(still, p * (1.0 - p), (p - p_base) / np.where(still, 1.0, moved))


def _ensemble(
    predictor: Predictor, arrays: dict[str, np.ndarray], steps: int, target: np.ndarray | None
) -> Attributions:
    """The weighted sum of the members' attributions; the fixed features' folded into the baseline."""
    ensemble = predictor.artifact.model
    n = len(next(iter(arrays.values())))
    if target is None:
        target = _target_index(predictor.task, ensemble.predict(arrays) if predictor.task != "regression" else None, n)
    full = ensemble.with_fixed(arrays)
    reported = {name: j for j, name in enumerate(predictor.features) if name not in ensemble.fixed_features}
    values, instance, baseline, folded = np.zeros((n, len(predictor.features))), np.zeros(n), np.zeros(n), np.zeros(n)
    for name, member in ensemble.members.items():
        weight = ensemble.weights[name]
        if not weight:  # as `EnsembleModel.member_outputs`: a member without weight is not even scored
            continue
        part = attribute(member, full, steps, target)
        for k, feature in enumerate(part.features):
            if feature in reported:
                values[:, reported[feature]] += weight * part.values[:, k]
            else:  # a fixed feature: the request has no value for it
                folded += weight * part.values[:, k]
        instance += weight * part.instance
        baseline += weight * part.baseline
        folded += weight * part.folded
    return Attributions(predictor.features, values, np.asarray(target, dtype=int), instance, baseline, folded)


def _explanation(predictor: Predictor, attributed: Attributions, i: int) -> dict[str, Any]:
    """One instance's Vertex `Explanation`, from its attributions per feature."""
    index = {name: k for k, name in enumerate(attributed.features)}
    row = attributed.values[i]
    per_feature = {name: float(row[index[name]]) if name in index else 0.0 for name in predictor.features}
    target = int(attributed.target[i])
    instance_out = float(attributed.instance[i])
    baseline_out = float(attributed.baseline[i] + attributed.folded[i])
    delta = instance_out - baseline_out
    total = sum(per_feature.values())
    attribution = {
        "baselineOutputValue": baseline_out,
        "instanceOutputValue": instance_out,
        "featureAttributions": per_feature,
        "outputIndex": [] if predictor.task == "regression" else [target],
        "approximationError": abs(total - delta) / max(abs(delta), 1e-9) if delta else abs(total),
        "outputName": "value" if predictor.task == "regression" else "scores",
    }
    if predictor.task != "regression":
        attribution["outputDisplayName"] = predictor.classes[target]
    return {"attributions": [attribution]}


def _check_finite(predictor: Predictor, columns: dict[str, list[Any]], first: int, attributed: Attributions) -> None:
    """Refuse non-finite explanations: at the baseline the model is at fault (a 500), else the instance's values."""
    if not np.isfinite(attributed.baseline).all():
        raise ModelOutputError("the model's output at the explanation baseline (every feature left out) is not finite")
    finite = np.isfinite(attributed.values).all(axis=1) & np.isfinite(attributed.instance)
    finite &= np.isfinite(attributed.folded)
    if not finite.all():
        index = int(np.flatnonzero(~finite)[0])
        numbers = {name: columns[name][index] for name in predictor.numeric}
        raise UserError(
            f"instance {first + index}: its attributions are not finite numbers for its numeric values {numbers}: "
            "they are too large for the model's float32 arithmetic"
        )


def _target_index(task: str, outputs: np.ndarray | None, n: int | None = None) -> np.ndarray:
    """The output explained: the positive class (binary), the top class (multiclass), the value (regression)."""
    if task == "multiclass_classification":
        return np.asarray(outputs).argmax(axis=1)
    n = len(outputs) if n is None else n
    return np.full(n, 1 if task == "binary_classification" else 0, dtype=int)


def _pick(out: Any, target: np.ndarray) -> Any:
    """Per row, the explained output: for binary the sigmoid itself is P(positive)."""
    import tensorflow as tf

    if out.shape[-1] == 1:
        return tf.reshape(out, (-1,))
    return tf.gather(out, tf.constant(target, dtype=tf.int32), axis=1, batch_dims=1)


def _sigmoid(margins: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow for large negative margins."""
    e = np.exp(-np.abs(margins))
    return np.where(margins >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softmax(margins: np.ndarray) -> np.ndarray:
    e = np.exp(margins - margins.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
