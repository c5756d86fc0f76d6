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

Boosted trees (gbt): TreeSHAP from XGBoost (`TreeModel.shap`), exact in margin space. It gives
each feature j a contribution vector c_j, one entry per margin (one for regression and binary, K
for multiclass: `pred_contribs` of `multi:softprob`), and the bias column m0, the model's expected
margins over its training data; the instance's margins are m(x) = m0 + dm, dm = sum_j c_j.
Regression: the link is the identity, the attributions are TreeSHAP's c_j, exact, and the
baseline is the expected value. Classification: the output p_k is the sigmoid (binary) or the
softmax (multiclass, k the explained class) of the margins, and a feature's attribution is the
change of p_k along the straight margin path from m0 to m(x) caused by its contribution vector:
`a_j = integral over a in [0, 1] of grad p_k(m0 + a dm) . c_j`. The shares come from TreeSHAP's
per-class contributions, the units from the link; summed over the features the integrand is
`d p_k / d a`, so the attributions sum to `p_k(x) - p_k(base)`, `p_k(base)` the baseline.
- Binary: one margin, so the integral is `c_j (p(x) - p(base)) / dm` exactly (where dm == 0, the
  sigmoid's slope `p(1 - p)`): TreeSHAP's margins rescaled by one factor, in (0, 1/4].
- Multiclass: grad p_k = p_k (e_k - p), so `a_j = integral of p_k (c_jk - p . c_j)`: a feature
  counts by how it moves class k's margin against the probability-weighted average of every
  class's, so one that raises every margin alike gets 0, and one that raises another class's
  margin more than k's lowers p_k. The integral is Gauss-Legendre quadrature with each instance's
  node count from how far its margins move (`_path_nodes`: the integrand is analytic in a strip
  around the path; 16 or 32 nodes on the sample data), so completeness holds up to the
  quadrature's error, which `approximationError` reports: 1.5e-14 at most on the sample data
  (4 regions x 600 rows, plan as the label), where a 64-step midpoint Riemann sum missed by up to
  1.5e-3 (relative). Each attribution is bounded by a quarter of its vector's spread,
  `|a_j| <= (max_i c_ji - min_i c_ji) / 4` (binary: `|c_j| / 4`), not by 1: only the sum is a
  probability change. It replaces rescaling c_jk by `(p_k(x) - p_k(base)) / (m_k(x) - m_k(base))`,
  which ignored the other classes' margins: on the sample data that ratio ran from -175 to 9
  (negative on 10 rows, where most attributions had the wrong sign; 2 rows beyond +-1, one at
  157), and no ratio sums to p_k's change when m_k does not move while the other margins do. The new attributions run
  from -0.47 to 0.90 there.

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
# Multiclass trees: Gauss-Legendre along the margin path (see `_path_nodes`).
PATH_TOLERANCE = 1e-13
MIN_PATH_NODES = 8
MAX_PATH_NODES = 4096  # enough for margins spreading over ~900; wider moves report their miss
PATH_BLOCK = 64  # nodes evaluated at once: memory is PATH_BLOCK x instances x classes floats


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
    """TreeSHAP's per-output contributions, carried to the output's units (see the module's docstring)."""
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
        p_base, p = _sigmoid(bias[:, 0]), _sigmoid(bias[:, 0] + moved[:, 0])
        values = per_feature[:, 0, :] * _output_scale(moved[:, 0], p, p_base)[:, None]
        return Attributions(features, values, np.ones(n, dtype=int), p, p_base, np.zeros(n))
    probabilities = _softmax(bias + moved)
    target = probabilities.argmax(axis=1) if target is None else np.asarray(target, dtype=int)
    p_base, p = _softmax(bias)[rows, target], probabilities[rows, target]
    return Attributions(features, _softmax_path(bias, per_feature, target), target, p, p_base, np.zeros(n))


def _output_scale(moved: np.ndarray, p: np.ndarray, p_base: np.ndarray) -> np.ndarray:
    """Binary margin to output units: `(p - p_base) / moved`, or the sigmoid's slope `p(1 - p)` where it stayed."""
    still = moved == 0
    return np.where(still, p * (1.0 - p), (p - p_base) / np.where(still, 1.0, moved))


def _softmax_path(bias: np.ndarray, per_feature: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Multiclass attributions (n, features): `integral over a in [0, 1] of grad softmax_k(m0 + a dm) . c_j`.

    `bias` (n, K) is m0, `per_feature` (n, K, F) the contribution vectors c_j, `target` k per row.
    The gradient of `p_k = softmax_k(m)` is `p_k (e_k - p)`, so the integrand is
    `p_k(a) (c_jk - p(a) . c_j)`; only the K-vector `G = integral of p_k (e_k - p)` depends on the
    path, and each feature's attribution is `G . c_j`. The integral is Gauss-Legendre with each row's
    node count from `_path_nodes`; rows are computed independently of each other (no BLAS
    reductions), so an instance's attributions do not depend on the other instances explained with it.
    """
    moved = per_feature.sum(axis=2)
    n, classes = bias.shape
    counts = _path_nodes(moved.max(axis=1) - moved.min(axis=1))
    integral = np.zeros((n, classes))
    for count in np.unique(counts):
        rows = np.flatnonzero(counts == count)
        nodes, weights = _gauss_legendre(int(count))
        k = target[rows]
        for first in range(0, len(nodes), PATH_BLOCK):
            alphas, w = nodes[first : first + PATH_BLOCK], weights[first : first + PATH_BLOCK]
            margins = bias[rows][None] + alphas[:, None, None] * moved[rows][None]  # (nodes, rows, K)
            p = _softmax(margins.reshape(-1, classes)).reshape(margins.shape)
            p_k = p[:, np.arange(len(rows)), k]  # (nodes, rows)
            gradient = -p_k[:, :, None] * p  # p_k (e_k - p): (nodes, rows, K)
            gradient[:, np.arange(len(rows)), k] += p_k
            integral[rows] += (w[:, None, None] * gradient).sum(axis=0)
    return (integral[:, :, None] * per_feature).sum(axis=1)


def _path_nodes(spread: np.ndarray) -> np.ndarray:
    """Gauss-Legendre nodes per row for a margin move whose classes spread over `spread` (max - min of dm).

    Along the path, `sum_i exp(m0_i + a dm_i)` has no zero while `|Im a| < pi / spread` (its terms'
    phases then lie in an arc shorter than pi), so the integrand is analytic in that strip (2 pi /
    spread wide each side of [-1, 1], where Gauss-Legendre's nodes live) and the rule's error falls
    as `rho^(-2 nodes)`, `rho = exp(asinh(pi / spread))` for the ellipse half-way to the strip's
    edge. Nodes for `rho^(-2 nodes) <= PATH_TOLERANCE`, rounded up to a power of two from
    `MIN_PATH_NODES` to `MAX_PATH_NODES` (the rest then shows in approximationError).
    """
    with np.errstate(divide="ignore"):
        width = np.arcsinh(np.pi / np.asarray(spread, dtype=np.float64))  # inf where nothing spreads
    needed = np.ceil(np.log(1.0 / PATH_TOLERANCE) / (2.0 * width))
    needed = np.where(np.isfinite(needed), needed, MIN_PATH_NODES)  # margins not finite: refused afterwards
    counts = MIN_PATH_NODES * 2.0 ** np.ceil(np.log2(np.maximum(needed, MIN_PATH_NODES) / MIN_PATH_NODES))
    return np.minimum(counts, MAX_PATH_NODES).astype(int)


def _gauss_legendre(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(count)
    return (nodes + 1.0) / 2.0, weights / 2.0


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
