import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fleetops.evaluation.metrics import (
    CONFIDENCE_THRESHOLDS,
    classification_metrics,
    headline,
    is_better,
    regression_metrics,
    roc_curve,
    undefined_reasons,
)


def test_thresholds_are_vertex_thresholds():
    assert CONFIDENCE_THRESHOLDS[:3] == [0.0, 0.05, 0.1]
    assert CONFIDENCE_THRESHOLDS[-5:] == [0.95, 0.96, 0.97, 0.98, 0.99]
    assert len(CONFIDENCE_THRESHOLDS) == 24


def test_binary_metrics_by_hand():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.9])
    m = classification_metrics(y, np.stack([1 - p1, p1], axis=1), ["0", "1"])
    assert m["auRoc"] == pytest.approx(0.75)  # 3 of 4 positive/negative pairs ordered right
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["logLoss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.4, 0.9])))
    assert m["confusionMatrix"]["rows"] == [[1, 1], [1, 1]]
    at_half = next(c for c in m["confidenceMetrics"] if c["confidenceThreshold"] == 0.5)
    assert (at_half["truePositiveCount"], at_half["falsePositiveCount"]) == (1, 1)
    assert (at_half["falseNegativeCount"], at_half["trueNegativeCount"]) == (1, 1)
    assert at_half["precision"] == 0.5 and at_half["recall"] == 0.5 and at_half["f1Score"] == 0.5


def test_multiclass_metrics_are_micro_averaged():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    p = rng.dirichlet([1, 1, 1], 200)
    p[np.arange(200), y] += 0.5
    p /= p.sum(axis=1, keepdims=True)
    m = classification_metrics(y, p, ["a", "b", "c"])
    assert m["auRoc"] == pytest.approx(roc_auc_score(np.eye(3)[y].ravel(), p.ravel()))
    assert len(m["confusionMatrix"]["rows"]) == 3
    assert [s["displayName"] for s in m["confusionMatrix"]["annotationSpecs"]] == ["a", "b", "c"]


def test_undefined_metric_is_none_not_zero():
    m = classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.4, 0.6]]), ["0", "1"])
    assert m["auRoc"] is None
    assert roc_curve(np.array([1, 1]), np.array([[0.2, 0.8], [0.4, 0.6]]))["fpr"] == []


@pytest.mark.parametrize("only, name", [(0, "no"), (1, "yes")])
def test_one_class_test_split_leaves_ranking_metrics_undefined_with_a_reason(only, name):
    # sklearn returns auPrc 0.0 (only negatives) or 1.0 (only positives) here; neither is a score.
    y = np.full(75, only)
    p1 = np.linspace(0.05, 0.95, 75)
    m = classification_metrics(y, np.stack([1 - p1, p1], axis=1), ["no", "yes"])
    assert m["auPrc"] is None and m["auRoc"] is None
    assert m["logLoss"] > 0 and 0 <= m["accuracy"] <= 1  # defined with one class
    assert set(headline(m)) == {"logLoss", "accuracy"}  # a Metrics artifact gets no stand-in number
    reasons = undefined_reasons(m, y, ["no", "yes"], "the test split of segment 'x'")
    assert reasons == {
        "auPrc": f"auPrc is undefined: the test split of segment 'x' has only class '{name}' (75 rows)",
        "auRoc": f"auRoc is undefined: the test split of segment 'x' has only class '{name}' (75 rows)",
    }


def test_multiclass_with_one_class_present_stays_defined_micro_averaged():
    p = np.array([[0.6, 0.3, 0.1], [0.5, 0.35, 0.15], [0.25, 0.45, 0.3]])
    m = classification_metrics(np.zeros(3, dtype=int), p, ["a", "b", "c"])
    assert m["auRoc"] == pytest.approx(roc_auc_score(np.eye(3)[[0, 0, 0]].ravel(), p.ravel()))
    assert undefined_reasons(m, np.zeros(3, dtype=int), ["a", "b", "c"], "x") == {}


def test_constant_regression_label_leaves_r_squared_undefined():
    y = np.full(4, 3.0)
    m = regression_metrics(y, np.array([3.0, 3.0, 3.0, 3.0]))  # sklearn's default would say 1.0
    assert m["rSquared"] is None and m["rootMeanSquaredError"] == 0.0
    assert undefined_reasons(m, y, [], "the test split of segment 'x'") == {
        "rSquared": "rSquared is undefined: the test split of segment 'x' has the same label value 3 in every row "
        "(4 rows)"
    }


def test_roc_curve_is_json_safe():
    y = np.array([0, 1, 0, 1, 1])
    p = np.array([0.2, 0.7, 0.4, 0.9, 0.3])
    curve = roc_curve(y, np.stack([1 - p, p], axis=1))
    assert curve["fpr"][0] == 0.0 and curve["tpr"][-1] == 1.0
    assert max(curve["thresholds"]) <= 1.0


def test_regression_metrics_by_hand():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert m["rootMeanSquaredError"] == pytest.approx(np.sqrt(4 / 3))
    assert m["meanAbsoluteError"] == pytest.approx(2 / 3)
    assert m["rSquared"] == pytest.approx(1 - 4 / 2)
    assert m["meanAbsolutePercentageError"] == pytest.approx(100 * (2 / 3) / 3)


def test_is_better_respects_goal_and_margin():
    assert is_better(0.80, 0.79, "maximize", 0.005)
    assert not is_better(0.794, 0.79, "maximize", 0.005)
    assert is_better(0.30, 0.40, "minimize", 0.05)
    assert not is_better(0.38, 0.40, "minimize", 0.05)
    assert is_better(0.5, None, "maximize", 0.1)
    assert not is_better(None, 0.5, "maximize", 0.0)


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("n", [3, 40, 700])
def test_metrics_equal_sklearns_definitions(k, n):
    """The numpy metrics are sklearn's: ranked areas with tied scores, log loss, confusion matrix, thresholds."""
    from sklearn import metrics as skm

    from fleetops.evaluation.metrics import primary_value

    rng = np.random.default_rng(k * 1000 + n)
    for rounding in (2, 6):  # coarse probabilities tie often
        y = rng.integers(0, k, n)
        y[:k] = np.arange(k)[: min(k, n)] if n >= k else y[:k]
        p = rng.dirichlet(np.ones(k), n).round(rounding)
        p = p / p.sum(axis=1, keepdims=True)
        classes = [str(i) for i in range(k)]
        ours = classification_metrics(y, p, classes)
        given, p = p, p / p.sum(axis=1, keepdims=True)  # as the function normalises rows (ties must stay ties)
        one_hot = np.eye(k, dtype=int)[y]
        truth, scores = (one_hot[:, 1], p[:, 1]) if k == 2 else (one_hot.ravel(), p.ravel())
        if len(np.unique(truth)) == 2:
            assert ours["auRoc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
            assert ours["auPrc"] == pytest.approx(skm.average_precision_score(truth, scores), abs=1e-12)
        clipped = np.clip(p, 1e-15, 1 - 1e-15)
        assert ours["logLoss"] == pytest.approx(skm.log_loss(y, clipped, labels=list(range(k))), rel=1e-9)
        assert ours["confusionMatrix"]["rows"] == skm.confusion_matrix(y, p.argmax(1), labels=list(range(k))).tolist()
        for entry in ours["confidenceMetrics"]:
            predicted = scores >= entry["confidenceThreshold"]
            assert entry["truePositiveCount"] == int((predicted & (truth == 1)).sum())
            assert entry["trueNegativeCount"] == int((~predicted & (truth == 0)).sum())
        for metric in ("auRoc", "logLoss", "accuracy", "auPrc"):
            assert primary_value("x", metric, y, given, classes) == pytest.approx(ours[metric], abs=1e-12)
