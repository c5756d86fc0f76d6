"""Evaluation metrics in the shapes Vertex AI uses for model evaluations.

Classification follows `classification_metrics_1.0.0.yaml` (auPrc, auRoc,
logLoss, confusionMatrix, confidenceMetrics at Vertex's thresholds);
regression follows `regression_metrics_1.0.0.yaml`. The dicts here are what is
imported into the registry and logged to KFP `Metrics` /
`ClassificationMetrics` artifacts.

A metric that is undefined on the rows it is computed on (auPrc and auRoc of a
binary test split holding one class, rSquared of a constant label) is None,
never a number that looks like a score; `undefined_reasons` says why, in words.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm

CLASSIFICATION_SCHEMA = "gs://google-cloud-aiplatform/schema/modelevaluation/classification_metrics_1.0.0.yaml"
REGRESSION_SCHEMA = "gs://google-cloud-aiplatform/schema/modelevaluation/regression_metrics_1.0.0.yaml"

# 0.00, 0.05, ..., 0.95, then 0.96 ... 0.99, as Vertex reports confidenceMetrics.
CONFIDENCE_THRESHOLDS = [round(i * 0.05, 2) for i in range(20)] + [0.96, 0.97, 0.98, 0.99]
_ROC_POINTS = 200
_EPS = 1e-15


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Vertex classification metrics. `y_true` holds class indices; `probabilities` is (n, k).

    For two classes the threshold metrics are about the positive class (index 1);
    for more, they are micro-averaged one-vs-rest, as Vertex does.

    auPrc and auRoc rank positives against negatives, so they are None when the
    truth they rank holds one class: a binary split with only positives or only
    negatives. Micro-averaged multiclass truth always holds both (each row is a
    positive for its class and a negative for the others), so there they stay
    defined. logLoss and accuracy are defined on any non-empty split.
    """
    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.clip(np.asarray(probabilities, dtype="float64"), 0.0, 1.0)
    # float32 softmax rows sum to 1 only within rounding; log loss wants exact probabilities.
    probabilities = probabilities / np.maximum(probabilities.sum(axis=1, keepdims=True), _EPS)
    n, k = probabilities.shape
    if n == 0:
        raise ValueError("cannot evaluate on zero rows")
    one_hot = np.eye(k, dtype=int)[y_true]
    if k == 2:
        truth, scores = one_hot[:, 1], probabilities[:, 1]
    else:
        truth, scores = one_hot.ravel(), probabilities.ravel()
    predicted = probabilities.argmax(axis=1)
    # Checked here, not left to sklearn: with one class, sklearn 1.9 only warns, and
    # average_precision_score returns 0.0 (no positives) or 1.0 (no negatives), which
    # would read as a real score and decide a promotion.
    ranked = len(np.unique(truth)) == 2
    # Computed with numpy as sklearn defines them (average_precision_score, roc_auc_score, log_loss,
    # confusion_matrix; the tests compare both): sklearn's input validation cost ~10 ms a call, most of a
    # fleet's evaluation and model selection at thousands of segments.
    clipped = np.clip(probabilities[np.arange(n), y_true], _EPS, 1 - _EPS)
    result: dict[str, Any] = {
        "auPrc": _finite_or_none(_average_precision(truth, scores)) if ranked else None,
        "auRoc": _finite_or_none(_roc_auc(truth, scores)) if ranked else None,
        "logLoss": float(-np.mean(np.log(clipped))),
        "accuracy": float((predicted == y_true).mean()),
        "confidenceMetrics": _at_thresholds(truth, scores, CONFIDENCE_THRESHOLDS),
        "confusionMatrix": {
            "annotationSpecs": [{"displayName": c} for c in classes],
            "rows": np.bincount(y_true * k + predicted, minlength=k * k).reshape(k, k).tolist(),
        },
    }
    return result


def _roc_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney statistic, tied scores counting a half (roc_auc_score)."""
    from scipy.stats import rankdata

    truth = truth.astype(bool)
    positives = int(truth.sum())
    negatives = len(truth) - positives
    ranks = rankdata(scores)
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """Average precision as sklearn's average_precision_score: sum over thresholds of (R_n - R_n-1) * P_n."""
    order = np.argsort(-scores, kind="mergesort")
    ordered, hits = scores[order], truth[order].astype("float64")
    # The last position of each distinct score: one threshold per distinct value.
    ends = np.r_[np.flatnonzero(np.diff(ordered)), len(ordered) - 1]
    tps = np.cumsum(hits)[ends]
    fps = ends + 1 - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _at_thresholds(truth: np.ndarray, scores: np.ndarray, thresholds: list[float]) -> list[dict[str, float]]:
    """`_at_threshold` for every threshold at once."""
    positive = truth == 1
    predicted = scores[None, :] >= np.asarray(thresholds)[:, None]
    tp = (predicted & positive).sum(axis=1)
    fp = (predicted & ~positive).sum(axis=1)
    fn = int(positive.sum()) - tp
    tn = int((~positive).sum()) - fp
    return [
        _counts_at(t, int(a), int(b), int(c), int(d)) for t, a, b, c, d in zip(thresholds, tp, fp, fn, tn, strict=True)
    ]


def json_safe(obj: Any) -> Any:
    """Metrics (and what holds them) as JSON can carry them: None for undefined values (NaN, inf) instead of
    invalid JSON, plain Python numbers and bools for numpy's, string keys."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None


def primary_value(task: str, metric: str, y_true: np.ndarray, outputs: np.ndarray, classes: list[str]) -> float | None:
    """One metric, as `classification_metrics` / `regression_metrics` compute it, without the others.

    Choosing among a segment's candidates needs only the primary metric of each on validation and test
    rows: for a fleet of thousands that is most of the metric work, so auRoc, logLoss and accuracy are
    computed directly (auRoc as the Mann-Whitney statistic with tied ranks averaged, which is what
    `roc_auc_score` computes); any other metric through the full function.
    """
    if task == "regression":
        return regression_metrics(y_true, outputs).get(metric)
    y_true = np.asarray(y_true, dtype=int)
    if metric not in ("auRoc", "logLoss", "accuracy") or len(y_true) == 0:
        return classification_metrics(y_true, outputs, classes).get(metric)
    probabilities = np.clip(np.asarray(outputs, dtype="float64"), 0.0, 1.0)
    probabilities = probabilities / np.maximum(probabilities.sum(axis=1, keepdims=True), _EPS)
    if metric == "accuracy":
        return float((probabilities.argmax(axis=1) == y_true).mean())
    if metric == "logLoss":
        picked = np.clip(probabilities[np.arange(len(y_true)), y_true], _EPS, 1 - _EPS)
        return float(-np.mean(np.log(picked)))
    k = probabilities.shape[1]
    one_hot = np.eye(k, dtype=bool)[y_true]
    truth, scores = (one_hot[:, 1], probabilities[:, 1]) if k == 2 else (one_hot.ravel(), probabilities.ravel())
    if truth.all() or not truth.any():
        return None
    return _finite_or_none(_roc_auc(truth, scores))


def roc_curve(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, list[float]]:
    """ROC curve points (at most ~200) for KFP `ClassificationMetrics.log_roc_curve`."""
    probabilities = np.asarray(probabilities)
    k = probabilities.shape[1]
    one_hot = np.eye(k, dtype=int)[np.asarray(y_true, dtype=int)]
    truth, scores = (one_hot[:, 1], probabilities[:, 1]) if k == 2 else (one_hot.ravel(), probabilities.ravel())
    if len(np.unique(truth)) < 2:
        return {"fpr": [], "tpr": [], "thresholds": []}
    fpr, tpr, thresholds = skm.roc_curve(truth, scores, drop_intermediate=True)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), _ROC_POINTS)).astype(int))
    # sklearn's first threshold is +inf, which JSON cannot carry.
    thresholds = np.minimum(thresholds, 1.0)
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(), "thresholds": thresholds[keep].tolist()}


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float | None]:
    """Vertex regression metrics; rSquared is None when the label is constant (or there is one row)."""
    y_true = np.asarray(y_true, dtype="float64")
    y_pred = np.asarray(y_pred, dtype="float64")
    if y_true.size == 0:
        raise ValueError("cannot evaluate on zero rows")
    # R² divides by the label's variance; sklearn turns that 0/0 into 0.0 or 1.0, which would read as a score.
    varies = y_true.size > 1 and bool(np.ptp(y_true) > 0)
    result = {
        "rootMeanSquaredError": float(np.sqrt(skm.mean_squared_error(y_true, y_pred))),
        "meanAbsoluteError": float(skm.mean_absolute_error(y_true, y_pred)),
        "rSquared": _safe(lambda: skm.r2_score(y_true, y_pred)) if varies else None,
    }
    nonzero = y_true != 0
    if nonzero.any():
        result["meanAbsolutePercentageError"] = float(
            100 * np.mean(np.abs((y_true[nonzero] - y_pred[nonzero]) / y_true[nonzero]))
        )
    if (y_true > -1).all() and (y_pred > -1).all():
        result["rootMeanSquaredLogError"] = float(np.sqrt(np.mean((np.log1p(y_pred) - np.log1p(y_true)) ** 2)))
    return result


def task_metrics(task: str, y_true: np.ndarray, outputs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Every metric of a task: `regression_metrics` of predictions, or `classification_metrics` of probabilities."""
    if task == "regression":
        return regression_metrics(y_true, outputs)
    return classification_metrics(y_true, outputs, classes)


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The defined scalar metrics of an evaluation (what goes into a KFP `Metrics` artifact).

    Undefined metrics (None) are left out rather than written as a number: a
    `Metrics` artifact holds numbers only. `undefined_reasons` names what is missing.
    """
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def undefined_reasons(
    metrics: dict[str, Any], y_true: np.ndarray, classes: list[str] | None, where: str
) -> dict[str, str]:
    """Why each metric that is None in `metrics` is undefined on the rows it was computed on.

    Args:
        metrics: The output of `classification_metrics` or `regression_metrics`.
        y_true: The labels those metrics were computed on: class indices, or values for regression.
        classes: The class names for classification; empty or None for regression.
        where: The rows, for people, e.g. "the test split of segment 'north'".

    Returns:
        Metric name -> a sentence, e.g. "auRoc is undefined: the test split of
        segment 'north' has only class '0' (75 rows)". Empty when every metric is defined.
    """
    missing = sorted(name for name, value in metrics.items() if value is None)
    if not missing:
        return {}
    cause = _undefined_cause(np.asarray(y_true), classes, where)
    return {name: f"{name} is undefined: {cause}" for name in missing}


def is_better(challenger: float | None, champion: float | None, goal: str, margin: float) -> bool:
    """True when the challenger beats the champion by more than `margin` in the metric's direction."""
    if challenger is None or not np.isfinite(challenger):
        return False
    if champion is None or not np.isfinite(champion):
        return True
    if goal == "maximize":
        return challenger > champion + margin
    return challenger < champion - margin


def _counts_at(threshold: float, tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "confidenceThreshold": threshold,
        "precision": precision,
        "recall": recall,
        "falsePositiveRate": fp / (fp + tn) if fp + tn else 0.0,
        "f1Score": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "truePositiveCount": tp,
        "falsePositiveCount": fp,
        "falseNegativeCount": fn,
        "trueNegativeCount": tn,
    }


def _undefined_cause(y_true: np.ndarray, classes: list[str] | None, where: str) -> str:
    """What about these labels leaves a metric undefined, as the end of a sentence."""
    n = len(y_true)
    rows = f"{n} row" if n == 1 else f"{n} rows"
    if classes:
        present = np.unique(y_true)
        if len(present) == 1:
            return f"{where} has only class {classes[int(present[0])]!r} ({rows})"
    elif n < 2:
        return f"{where} has {rows}"
    elif np.all(y_true == y_true[0]):
        return f"{where} has the same label value {float(y_true[0]):g} in every row ({rows})"
    # Both classes (or varying values) yet no finite value: the model's outputs are not finite.
    return f"the model's outputs give no finite value on {where} ({rows})"


def _safe(compute: Any) -> float | None:
    """A metric sklearn cannot compute on this data (it raises, or gives NaN or inf) is None, not a crash."""
    try:
        value = float(compute())
    except ValueError:
        return None
    return value if np.isfinite(value) else None
