"""`:explain` for every kind of model: boosted trees (TreeSHAP in output units) and ensembles, beside Keras.

Real models trained on the sample data: XGBoost boosters through `fit_trees`, Keras models through
the trainer's `fit`, saved as artifacts and loaded as the server loads them.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fleetops.data.sample import SAMPLE_SPEC, make_churn
from fleetops.data.split import with_splits
from fleetops.data.validation import coerce_features, statistics
from fleetops.errors import UserError
from fleetops.names import METADATA_IDENTITY, MODEL_METADATA_FILE
from fleetops.serving.explain import attribute, explain, integrated_gradients
from fleetops.serving.lite import input_arrays
from fleetops.serving.predictor import ModelOutputError, Predictor
from fleetops.spec import Architecture, Task, parse_spec
from fleetops.training.artifact import save_artifact
from fleetops.training.ensemble import MEMBERS_DIR, EnsembleModel
from fleetops.training.model import fit_vocabularies
from fleetops.training.segments import class_names, encode_labels, fit
from fleetops.training.trees import fit_trees

NUMERIC = ["tenure_months", "monthly_charges", "support_calls", "data_usage_gb"]
CATEGORICAL = ["plan", "contract", "payment_method"]
# Each task's label and features, from the sample columns: churn; the plan (3 classes), which the
# charges give away; the monthly charges, which the plan mostly sets.
TASKS = {
    Task.BINARY: ("churned", NUMERIC, CATEGORICAL),
    Task.MULTICLASS: ("plan", NUMERIC, [c for c in CATEGORICAL if c != "plan"]),
    Task.REGRESSION: ("monthly_charges", [c for c in NUMERIC if c != "monthly_charges"], CATEGORICAL),
}
PRIMARY_METRIC = {Task.BINARY: "auRoc", Task.MULTICLASS: "logLoss", Task.REGRESSION: "rootMeanSquaredError"}
SEGMENT = "area"  # the segment as a feature (the spec's segment column may not be one): a copy of region
# Relative: TreeSHAP is exact, so is the binary rescaling, up to float error; multiclass integrates
# along the margin path by Gauss-Legendre, to ~1e-14 on the sample data.
COMPLETENESS = 1e-5


@pytest.fixture(scope="module")
def rows():
    spec = parse_spec(SAMPLE_SPEC.format(source="x.csv"))
    frame = make_churn(rows_per_segment=300, segments=2, seed=3)
    frame[SEGMENT] = frame["region"]
    return with_splits(frame, spec.data.split, spec.data.split_key)


def _spec(task: Task, numeric: list[str], categorical: list[str]):
    label = TASKS[task][0]
    base = parse_spec(SAMPLE_SPEC.format(source="x.csv")).model_dump(mode="json")
    return parse_spec(
        base
        | {
            "task": task.value,
            "label": label,
            "features": {"numeric": numeric, "categorical": categorical},
            "architectures": ["linear", "gbt"],
            "evaluation": base["evaluation"] | {"primary_metric": PRIMARY_METRIC[task], "slice_columns": []},
            "training": base["training"] | {"epochs": 3},
        }
    )


def _metadata(task: Task, numeric: list[str], categorical: list[str], classes: list[str], architecture: str):
    return {
        "task": task.value,
        "features": {"numeric": numeric, "categorical": categorical},
        "classes": classes,
        "architecture": architecture,
    }


def _train_gbt(rows, task: Task, directory, extra_categorical=(), **training):
    """A gbt artifact for `task` on the sample rows; `extra_categorical` joins the task's features."""
    label, numeric, categorical = TASKS[task]
    categorical = [*categorical, *extra_categorical]
    spec = _spec(task, numeric, categorical)
    typed = coerce_features(rows, numeric, categorical)
    train, validation = typed[typed["__split"] == "train"], typed[typed["__split"] == "validation"]
    classes = class_names(typed[label]) if task.is_classification else []
    params = spec.training.model_copy(update=training)
    model, _ = fit_trees(
        train,
        validation,
        encode_labels(train[label], classes),
        encode_labels(validation[label], classes),
        task,
        numeric,
        categorical,
        fit_vocabularies(train, spec),
        params,
        len(classes),
    )
    metadata = _metadata(task, numeric, categorical, classes, "gbt")
    return save_artifact(model, metadata, statistics(train, spec), directory)


def _train_keras(rows, task: Task, directory, extra_categorical=()):
    label, numeric, categorical = TASKS[task]
    categorical = [*categorical, *extra_categorical]
    spec = _spec(task, numeric, categorical)
    typed = coerce_features(rows, numeric, categorical)
    train, validation = typed[typed["__split"] == "train"], typed[typed["__split"] == "validation"]
    classes = class_names(typed[label]) if task.is_classification else []
    model, _, _ = fit(train, validation, spec, Architecture.LINEAR, spec.training, classes)
    metadata = _metadata(task, numeric, categorical, classes, "linear")
    return save_artifact(model, metadata, statistics(train, spec), directory)


def _instances(rows, features: list[str], n: int = 40) -> list[dict]:
    """Test rows as JSON instances, with missing values (None) and a category no model has seen."""
    test = rows[rows["__split"] == "test"].head(n)
    instances = [{f: (None if pd.isna(v) else v) for f, v in row.items()} for row in test[features].to_dict("records")]
    for instance in instances[::5]:
        instance[features[0]] = None
    instances[1][features[-1]] = "never-seen"
    return instances


@pytest.fixture(scope="module")
def gbt_models(rows, tmp_path_factory):
    root = tmp_path_factory.mktemp("gbt")
    return {task: _train_gbt(rows, task, root / task.value) for task in TASKS}


@pytest.fixture(scope="module")
def ensembles(rows, tmp_path_factory):
    """Per task, an ensemble of a Keras member and a gbt member, both taking the segment, fixed to 'north'."""
    built = {}
    for task in TASKS:
        directory = tmp_path_factory.mktemp(f"ensemble-{task.value}")
        members = directory / MEMBERS_DIR
        keras = _train_keras(rows, task, members / "linear", extra_categorical=[SEGMENT])
        gbt = _train_gbt(rows, task, members / "gbt", extra_categorical=[SEGMENT])
        label, numeric, categorical = TASKS[task]
        identities = {
            name: json.loads((path / MODEL_METADATA_FILE).read_text())[METADATA_IDENTITY]
            for name, path in (("linear", keras), ("gbt", gbt))
        }
        weights = {"linear": 0.4, "gbt": 0.6}
        model = EnsembleModel(task.value, dict.fromkeys(weights), weights, {SEGMENT: "north"}, identities=identities)
        classes = class_names(rows[label]) if task.is_classification else []
        spec = _spec(task, numeric, categorical)
        typed = coerce_features(rows, numeric, categorical)
        stats = statistics(typed[typed["__split"] == "train"], spec)
        save_artifact(model, _metadata(task, numeric, categorical, classes, "ensemble"), stats, directory)
        built[task] = directory
    return built


def _attribution(explanation: dict) -> dict:
    assert set(explanation) == {"attributions"} and len(explanation["attributions"]) == 1
    return explanation["attributions"][0]


def _check_vertex_shape(attribution: dict, predictor: Predictor) -> None:
    keys = {"baselineOutputValue", "instanceOutputValue", "featureAttributions", "outputIndex", "approximationError"}
    keys |= {"outputName"} | ({"outputDisplayName"} if predictor.task != "regression" else set())
    assert set(attribution) == keys
    assert list(attribution["featureAttributions"]) == predictor.features
    assert all(isinstance(v, float) and np.isfinite(v) for v in attribution["featureAttributions"].values())
    if predictor.task == "regression":
        assert attribution["outputName"] == "value" and attribution["outputIndex"] == []
    else:
        assert attribution["outputName"] == "scores"
        assert attribution["outputDisplayName"] == predictor.classes[attribution["outputIndex"][0]]


def _gap(attribution: dict) -> tuple[float, float]:
    """How far the attributions' sum is from instance - baseline, and that difference."""
    delta = attribution["instanceOutputValue"] - attribution["baselineOutputValue"]
    return sum(attribution["featureAttributions"].values()) - delta, delta


def _explained_outputs(predictor: Predictor, columns: dict) -> tuple[np.ndarray, np.ndarray]:
    """The model's prediction of the output each instance's explanation is about, and that output's index."""
    scores = predictor.predict_columns(columns)
    if predictor.task == "regression":
        return scores, np.zeros(len(scores), dtype=int)
    target = np.ones(len(scores), dtype=int) if predictor.task == "binary_classification" else scores.argmax(axis=1)
    return scores[np.arange(len(scores)), target], target


@pytest.mark.parametrize("task", list(TASKS), ids=lambda t: t.value)
def test_gbt_attributions_are_complete_and_in_the_outputs_units(gbt_models, rows, task):
    predictor = Predictor.load(gbt_models[task])
    assert predictor.runtime == "xgboost"
    columns = predictor.columns(_instances(rows, predictor.features))
    explanations = explain(predictor, columns)
    predicted, target = _explained_outputs(predictor, columns)
    assert len(explanations) == len(predicted)
    baselines = set()
    for i, explanation in enumerate(explanations):
        attribution = _attribution(explanation)
        _check_vertex_shape(attribution, predictor)
        gap, delta = _gap(attribution)
        assert abs(gap) <= COMPLETENESS * max(abs(delta), 1e-12)
        assert attribution["approximationError"] < 1e-9
        # The output explained is what :predict answers (float32 there), in the same units.
        assert attribution["instanceOutputValue"] == pytest.approx(float(predicted[i]), rel=1e-5, abs=1e-6)
        if task is not Task.REGRESSION:
            assert attribution["outputIndex"] == [int(target[i])]
            assert 0.0 < attribution["baselineOutputValue"] < 1.0
        baselines.add((tuple(attribution["outputIndex"]), attribution["baselineOutputValue"]))
    # The baseline is the model's expected output: one per explained class, the same for every instance.
    assert len(baselines) == len({b[0] for b in baselines})


@pytest.mark.parametrize("task", list(TASKS), ids=lambda t: t.value)
def test_gbt_attributions_are_treeshaps_contributions_carried_along_the_margin_path(gbt_models, rows, task):
    """Regression: TreeSHAP's margins; binary: rescaled by one factor; multiclass: the softmax path integral."""
    predictor = Predictor.load(gbt_models[task])
    trees = predictor.artifact.model
    columns = predictor.columns(_instances(rows, predictor.features))
    contributions = trees.shap(trees.matrix(input_arrays(predictor.numeric, predictor.categorical, columns)))
    for i, explanation in enumerate(explain(predictor, columns)):
        attribution = _attribution(explanation)
        k = attribution["outputIndex"][0] if task is Task.MULTICLASS else 0
        margins = contributions[i, k, :-1]
        values = np.array([attribution["featureAttributions"][f] for f in predictor.features])
        if task is Task.REGRESSION:
            np.testing.assert_array_equal(values, margins)
            continue
        all_margins = contributions[i].sum(axis=1)  # every output's margin at the instance
        base_margins = contributions[i, :, -1]
        if task is Task.BINARY:
            p, p_base = 1 / (1 + np.exp(-all_margins[0])), 1 / (1 + np.exp(-base_margins[0]))
        else:
            p = np.exp(all_margins[k]) / np.exp(all_margins).sum()
            p_base = np.exp(base_margins[k]) / np.exp(base_margins).sum()
        assert attribution["instanceOutputValue"] == pytest.approx(p, rel=1e-12)
        assert attribution["baselineOutputValue"] == pytest.approx(p_base, rel=1e-12)
        if task is Task.BINARY:  # the sigmoid is 1-D: the path integral is one factor for every feature
            np.testing.assert_allclose(values, margins * (p - p_base) / margins.sum(), rtol=1e-9, atol=1e-15)
        else:  # checked against another rule, Simpson's, on a fine grid
            expected, _ = _path_reference(base_margins, contributions[i, :, :-1], k)
            np.testing.assert_allclose(values, expected, rtol=1e-8, atol=1e-12)


def test_gbt_regression_attributions_are_xgboosts_own_contributions(gbt_models, rows):
    import xgboost as xgb

    predictor = Predictor.load(gbt_models[Task.REGRESSION])
    trees = predictor.artifact.model
    instances = _instances(rows, predictor.features)
    columns = predictor.columns(instances)
    x = trees.matrix(input_arrays(predictor.numeric, predictor.categorical, columns))
    matrix = xgb.DMatrix(x, feature_types=trees.feature_types, enable_categorical=True)
    contributions = trees.booster.predict(matrix, pred_contribs=True)  # (n, features + 1), float32
    assert contributions.shape == (len(instances), len(predictor.features) + 1)
    for i, explanation in enumerate(explain(predictor, columns)):
        attribution = _attribution(explanation)
        assert list(attribution["featureAttributions"].values()) == contributions[i, :-1].tolist()
        assert attribution["baselineOutputValue"] == float(contributions[i, -1])


def _one_feature_rows(task: Task, n: int = 400) -> pd.DataFrame:
    """Only `signal` matters: the label is 10 (regression) or 1 (binary) above 0.5, else 0; multiclass its third."""
    rng = np.random.default_rng(11)
    frame = pd.DataFrame(
        {
            "signal": rng.uniform(0, 1, n),
            "noise_a": rng.normal(0, 1, n),
            "noise_b": rng.uniform(-5, 5, n),
            "colour": rng.choice(["red", "green", "blue"], n),
        }
    )
    above = (frame["signal"] > 0.5).to_numpy()
    frame["y"] = np.where(above, 10.0, 0.0) if task is Task.REGRESSION else above.astype(int)
    if task is Task.MULTICLASS:
        frame["y"] = np.digitize(frame["signal"], [1 / 3, 2 / 3])
    return frame


def _one_feature_model(task: Task, directory, **training):
    from fleetops.spec import TrainingSpec

    frame = _one_feature_rows(task)
    numeric, categorical = ["signal", "noise_a", "noise_b"], ["colour"]
    typed = coerce_features(frame, numeric, categorical)
    params = TrainingSpec(**training)
    vocabularies = {"colour": ["blue", "green", "red"]}
    y = frame["y"].to_numpy()
    classes = {Task.BINARY: ["0", "1"], Task.MULTICLASS: ["0", "1", "2"]}.get(task, [])
    model, _ = fit_trees(typed, typed, y, y, task, numeric, categorical, vocabularies, params, len(classes))
    metadata = _metadata(task, numeric, categorical, classes, "gbt")
    save_artifact(model, metadata, {}, directory)
    return Predictor.load(directory), frame


def test_a_single_split_on_the_only_feature_that_matters_is_hand_checkable(tmp_path):
    """One stump on `signal`: its attribution is the prediction minus the training mean, every other is zero."""
    predictor, frame = _one_feature_model(
        Task.REGRESSION,
        tmp_path / "stump",
        num_trees=1,
        max_depth=1,
        tree_learning_rate=1.0,
        l2_regularization=0.0,  # so each leaf is its side's mean, exactly
        min_child_weight=0.0,
    )
    mean = frame["y"].mean()  # a stump fitting each side's mean, so the expected value is the label's mean
    columns = predictor.columns(
        [
            {"signal": 0.9, "noise_a": 3.0, "noise_b": -4.0, "colour": "red"},
            {"signal": 0.1, "noise_a": -3.0, "noise_b": 4.0, "colour": None},
        ]
    )
    high, low = (_attribution(e) for e in explain(predictor, columns))
    for attribution, value in ((high, 10.0), (low, 0.0)):
        assert attribution["instanceOutputValue"] == pytest.approx(value, abs=1e-5)
        assert attribution["baselineOutputValue"] == pytest.approx(mean, abs=1e-5)
        assert attribution["featureAttributions"] == {
            "signal": pytest.approx(value - mean, abs=1e-5),
            "noise_a": 0.0,
            "noise_b": 0.0,
            "colour": 0.0,
        }


def test_the_only_feature_that_matters_gets_all_the_probability(tmp_path):
    """A boosted classifier on a label only `signal` decides: its attribution is all of p(x) - p(base)."""
    predictor, frame = _one_feature_model(Task.BINARY, tmp_path / "binary", num_trees=30, max_depth=3)
    trees = predictor.artifact.model
    assert trees.numeric[0] == "signal"
    assert set(trees.booster.trees_to_dataframe()["Feature"]) == {"f0", "Leaf"}  # splits on signal, nothing else
    instances = [
        {"signal": 0.95, "noise_a": 1.0, "noise_b": 2.0, "colour": "red"},
        {"signal": 0.05, "noise_a": -1.0, "noise_b": 0.0, "colour": "blue"},
    ]
    high, low = (_attribution(e) for e in explain(predictor, predictor.columns(instances)))
    assert high["baselineOutputValue"] == low["baselineOutputValue"]
    assert high["instanceOutputValue"] > 0.9 > 0.1 > low["instanceOutputValue"]
    for attribution in (high, low):
        features = attribution["featureAttributions"]
        delta = attribution["instanceOutputValue"] - attribution["baselineOutputValue"]
        assert features["signal"] == pytest.approx(delta, rel=1e-9)
        assert features["noise_a"] == features["noise_b"] == features["colour"] == 0.0


def test_where_the_margin_does_not_move_the_links_slope_scales():
    """m(x) == m(base): p(1 - p), the limit of (p(x) - p(base)) / (m(x) - m(base)) as the move vanishes."""
    from fleetops.serving.explain import _output_scale, _sigmoid

    base = np.array([-2.0, 0.0, 0.7, 3.0])
    p_base = _sigmoid(base)
    still = _output_scale(np.zeros(4), p_base, p_base)
    np.testing.assert_allclose(still, p_base * (1 - p_base), rtol=1e-15)
    tiny = 1e-7
    np.testing.assert_allclose(_output_scale(np.full(4, tiny), _sigmoid(base + tiny), p_base), still, rtol=1e-6)
    assert np.allclose(_output_scale(np.array([1.0]), np.array([0.9]), np.array([0.5])), 0.4)


def test_the_only_feature_that_matters_gets_all_of_every_class_probability(tmp_path):
    """Three classes, the thirds of `signal`'s range: whichever class is explained, `signal` gets all of
    p_k(x) - p_k(base), and the other features, on which no tree splits, contribute zero vectors and get 0."""
    predictor, _ = _one_feature_model(Task.MULTICLASS, tmp_path / "thirds", num_trees=30, max_depth=3)
    trees = predictor.artifact.model
    assert trees.numeric[0] == "signal"
    assert set(trees.booster.trees_to_dataframe()["Feature"]) == {"f0", "Leaf"}  # splits on signal, nothing else
    instances = [
        {"signal": 0.1, "noise_a": 1.0, "noise_b": -4.0, "colour": "red"},
        {"signal": 0.5, "noise_a": -2.0, "noise_b": 0.0, "colour": None},
        {"signal": 0.9, "noise_a": 0.5, "noise_b": 3.0, "colour": "blue"},
    ]
    columns = predictor.columns(instances)
    explained = [_attribution(e) for e in explain(predictor, columns)]
    assert [a["outputIndex"] for a in explained] == [[0], [1], [2]]  # each instance's own third
    assert all(a["instanceOutputValue"] > 0.9 for a in explained)
    arrays = input_arrays(predictor.numeric, predictor.categorical, columns)
    for k in range(3):  # every class explained for every instance: rising and falling probabilities
        part = attribute(predictor, arrays, target=np.full(3, k))
        assert len(set(part.baseline)) == 1 and 0 < part.baseline[0] < 1  # the expected margins' p_k
        np.testing.assert_allclose(part.values[:, 0], part.instance - part.baseline, rtol=1e-9)
        assert (part.values[:, 1:] == 0.0).all()
        assert np.sign(part.instance - part.baseline).tolist() == [1 if i == k else -1 for i in range(3)]


def test_a_feature_that_moves_every_margin_alike_moves_no_probability():
    """Hand-made contributions for three classes from an even baseline (m0 = 0: p = 1/3 each), class 0 explained.

    `lower` takes 1 off class 0's margin, `shift` adds 3 to every margin, which no softmax sees. p_0
    falls from 1/3 to e^-1 / (e^-1 + 2): all of the fall is `lower`'s, none of it `shift`'s. The
    old rescaling by (p_0(x) - p_0(base)) / (m_0(x) - m_0(base)), a fall over a margin rise of 2,
    got both signs wrong: `lower` raised p_0, `shift` lowered it.
    """
    from fleetops.serving.explain import _softmax_path

    bias = np.zeros((1, 3))
    contributions = np.array([[[-1.0, 3.0], [0.0, 3.0], [0.0, 3.0]]])  # (instances, classes, features)
    values = _softmax_path(bias, contributions, np.array([0]))
    fall = np.exp(-1) / (np.exp(-1) + 2) - 1 / 3
    np.testing.assert_allclose(values[0], [fall, 0.0], rtol=1e-12, atol=1e-15)
    old = contributions[0, 0] * fall / contributions[0, 0].sum()
    assert old[0] > 0 > old[1]


@pytest.fixture(scope="module")
def sample_multiclass(tmp_path_factory):
    """A multiclass gbt on the whole sample data (4 regions x 600 rows, plan as the label), every row to explain."""
    spec = parse_spec(SAMPLE_SPEC.format(source="x.csv"))
    frame = with_splits(make_churn(), spec.data.split, spec.data.split_key)
    predictor = Predictor.load(
        _train_gbt(frame, Task.MULTICLASS, tmp_path_factory.mktemp("sample") / "plan", max_depth=6)
    )
    records = frame[predictor.features].to_dict("records")
    columns = predictor.columns([{f: None if pd.isna(v) else v for f, v in row.items()} for row in records])
    arrays = input_arrays(predictor.numeric, predictor.categorical, columns)
    trees = predictor.artifact.model
    return predictor, columns, attribute(predictor, arrays), trees.shap(trees.matrix(arrays))


def _old_scale(contributions: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The rescaling multiclass had: (p_k(x) - p_k(base)) / (m_k(x) - m_k(base)), blind to the other margins."""
    rows = np.arange(len(target))
    base = contributions[:, :, -1]
    margins = contributions.sum(axis=2)
    p = np.exp(margins) / np.exp(margins).sum(axis=1, keepdims=True)
    p_base = np.exp(base) / np.exp(base).sum(axis=1, keepdims=True)
    return (p[rows, target] - p_base[rows, target]) / (margins - base)[rows, target]


def _path_reference(base_margins: np.ndarray, contributions: np.ndarray, k: int, intervals: int = 2000):
    """integral of grad p_k(m0 + a dm) . c_j over a in [0, 1] by Simpson's rule, and the integrand on its grid.

    `base_margins` (K,) is m0, `contributions` (K, F) the vectors c_j; returns (F,) and (grid, F).
    """
    alphas = np.linspace(0.0, 1.0, 2 * intervals + 1)
    margins = base_margins + alphas[:, None] * contributions.sum(axis=1)
    p = np.exp(margins - margins.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    gradient = p[:, [k]] * (np.eye(len(base_margins))[k] - p)  # d p_k / d m along the path: (grid, K)
    directions = gradient @ contributions  # how each feature's vector moves p_k there: (grid, F)
    weights = np.ones(len(alphas))
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return weights @ directions / (3 * (len(alphas) - 1)), directions


def test_multiclass_gbt_attributions_are_complete_on_the_sample_data(sample_multiclass):
    """Every row: the attributions sum to p_k(x) - p_k(base), but for the quadrature's error (measured ~1e-14)."""
    predictor, columns, attributed, contributions = sample_multiclass
    explained = [_attribution(e) for e in explain(predictor, columns)]
    assert len(explained) == 2400
    for attribution in explained:
        gap, delta = _gap(attribution)
        assert abs(gap) <= 1e-4 * max(abs(delta), 1e-12)
        assert attribution["approximationError"] < 1e-10
    # The rows the old rescaling got wrong are there: its scale was negative, or beyond the sigmoid's 1/4.
    scale = _old_scale(contributions, attributed.target)
    assert (scale < 0).sum() >= 5 and scale.max() > 1


def test_multiclass_attributions_move_p_k_the_way_their_contribution_vectors_do(sample_multiclass):
    """On the rows where the old scale was negative: each feature's sign is the way its vector moves p_k.

    How a feature's vector c_j moves p_k is `grad p_k . c_j`, which changes along the path from the
    base margins to the instance's. Where it keeps one sign all the way (55 of the 60 features of
    those rows; the other 5 turn, and then the base point's direction need not be the total's), the
    attribution, its integral, has that sign: the base point's direction, and the instance's. The
    old attributions had the opposite sign on most of them: c_jk times a negative scale.
    """
    predictor, _, attributed, contributions = sample_multiclass
    scale = _old_scale(contributions, attributed.target)
    checked = reversed_before = 0
    for i in np.flatnonzero(scale < 0):
        k = attributed.target[i]
        expected, directions = _path_reference(contributions[i, :, -1], contributions[i, :, :-1], k)
        np.testing.assert_allclose(attributed.values[i], expected, rtol=1e-8, atol=1e-12)
        one_signed = (directions > 0).all(axis=0) | (directions < 0).all(axis=0)
        way = np.sign(directions[0, one_signed])
        assert (np.sign(attributed.values[i, one_signed]) == way).all()
        old = contributions[i, k, :-1] * scale[i]
        checked += int(one_signed.sum())
        reversed_before += int((np.sign(old[one_signed]) != way).sum())
    assert checked >= 30
    assert reversed_before > checked / 2


def test_multiclass_attributions_stay_within_a_quarter_of_their_contribution_spread(sample_multiclass):
    """|a_j| <= (max_i c_ji - min_i c_ji) / 4, for every feature of every row: what bounds an attribution.

    The integrand is p_k (c_jk - p . c_j) = p_k sum_(i != k) p_i (c_jk - c_ji), at most
    p_k (1 - p_k) spread(c_j) <= spread(c_j) / 4 (binary's |c_j| / 4: the sigmoid's largest slope).
    That bounds a feature by its own trees, not by 1: only the sum, p_k(x) - p_k(base), is a
    probability change. Two features with opposite vectors each move p_k, though together they
    do not: from m0 = 0, c = (10, 0, 0) and (-10, 0, 0) get +-20/9. On the sample data the
    contributions spread over at most ~6.6 and no attribution leaves +-1 (before: up to 157).
    """
    from fleetops.serving.explain import _softmax_path

    _, _, attributed, contributions = sample_multiclass
    per_feature = contributions[:, :, :-1]
    spread = per_feature.max(axis=1) - per_feature.min(axis=1)
    assert (np.abs(attributed.values) <= spread / 4 + 1e-12).all()
    assert np.abs(attributed.values).max() < 1.0
    old = (
        per_feature[np.arange(len(per_feature)), attributed.target]
        * _old_scale(contributions, attributed.target)[:, None]
    )
    assert np.abs(old).max() > 1.0
    cancelling = _softmax_path(np.zeros((1, 3)), np.array([[[10.0, -10.0], [0.0, 0.0], [0.0, 0.0]]]), np.array([0]))
    np.testing.assert_allclose(cancelling[0], [20 / 9, -20 / 9], rtol=1e-12)


def test_a_model_that_never_splits_explains_nothing_without_dividing_by_zero(tmp_path):
    """No split, so no feature moves the margin: every attribution is 0 and the output is the baseline."""
    predictor, _ = _one_feature_model(Task.BINARY, tmp_path / "flat", num_trees=3, min_child_weight=1000.0)
    assert set(predictor.artifact.model.booster.trees_to_dataframe()["Feature"]) == {"Leaf"}
    columns = predictor.columns([{"signal": 0.9, "noise_a": 0.0, "noise_b": 0.0, "colour": "red"}])
    (explanation,) = explain(predictor, columns)
    attribution = _attribution(explanation)
    assert set(attribution["featureAttributions"].values()) == {0.0}
    assert attribution["instanceOutputValue"] == attribution["baselineOutputValue"]
    assert attribution["approximationError"] == 0.0


@pytest.mark.parametrize("task", list(TASKS), ids=lambda t: t.value)
def test_an_ensemble_is_its_members_weighted_attributions_with_the_fixed_segment_folded_in(ensembles, rows, task):
    predictor = Predictor.load(ensembles[task])
    assert predictor.runtime == "ensemble"
    ensemble = predictor.artifact.model
    assert {m.artifact.kind for m in ensemble.members.values()} == {"keras", "gbt"}
    assert SEGMENT not in predictor.features
    columns = predictor.columns(_instances(rows, predictor.features, n=30))
    explanations = explain(predictor, columns, steps=100)
    predicted, target = _explained_outputs(predictor, columns)

    # Each member explained by its own method for the ensemble's explained output, given the fixed segment.
    arrays = ensemble.with_fixed(input_arrays(predictor.numeric, predictor.categorical, columns))
    assert set(np.asarray(arrays[SEGMENT]).reshape(-1)) == {"north"}
    members = {name: attribute(member, arrays, 100, target) for name, member in ensemble.members.items()}
    weights = ensemble.weights
    for i, explanation in enumerate(explanations):
        attribution = _attribution(explanation)
        _check_vertex_shape(attribution, predictor)
        features = attribution["featureAttributions"]
        assert SEGMENT not in features
        for feature in predictor.features:
            expected = sum(w * m.values[i, m.features.index(feature)] for m, w in _pairs(members, weights))
            assert features[feature] == pytest.approx(expected, rel=1e-9, abs=1e-12)
        # The segment's attribution is folded into the baseline: the members' baselines and their segment shares.
        folded = sum(w * (m.baseline[i] + m.values[i, m.features.index(SEGMENT)]) for m, w in _pairs(members, weights))
        assert attribution["baselineOutputValue"] == pytest.approx(folded, rel=1e-9)
        assert attribution["instanceOutputValue"] == pytest.approx(float(predicted[i]), rel=1e-5, abs=1e-5)
        if task is not Task.REGRESSION:
            assert attribution["outputIndex"] == [int(target[i])]
        # Completeness over the request's features: exact but for the Keras member's Riemann sum, which
        # approximationError reports.
        gap, delta = _gap(attribution)
        keras = members["linear"]
        keras_gap = abs(keras.values[i].sum() - (keras.instance[i] - keras.baseline[i]))
        assert abs(gap) <= weights["linear"] * keras_gap + COMPLETENESS * max(abs(delta), 1e-12)
        assert attribution["approximationError"] == pytest.approx(abs(gap) / max(abs(delta), 1e-9), rel=1e-6, abs=1e-9)
        assert attribution["approximationError"] < 1e-4  # 100 steps
    # The fixed segment moved the members' outputs: what is folded into the baseline is not nothing.
    assert max(abs(m.values[:, m.features.index(SEGMENT)]).max() for m in members.values()) > 1e-3


def _pairs(members: dict, weights: dict):
    return [(members[name], weights[name]) for name in members]


def test_an_ensemble_of_trees_is_exactly_complete(rows, tmp_path):
    """Two gbt members (and one weighted out): completeness is TreeSHAP's, exact, across chunks."""
    task = Task.MULTICLASS
    members = tmp_path / MEMBERS_DIR
    _train_gbt(rows, task, members / "deep", extra_categorical=[SEGMENT], max_depth=6)
    _train_gbt(rows, task, members / "shallow", extra_categorical=[SEGMENT], max_depth=2, seed=3)
    _train_gbt(rows, task, members / "unused", extra_categorical=[SEGMENT], max_depth=1)
    weights = {"deep": 0.3, "shallow": 0.7, "unused": 0.0}
    label, numeric, categorical = TASKS[task]
    model = EnsembleModel(task.value, dict.fromkeys(weights), weights, {SEGMENT: "south"})
    metadata = _metadata(task, numeric, categorical, class_names(rows[label]), "ensemble")
    save_artifact(model, metadata, {}, tmp_path)
    predictor = Predictor.load(tmp_path)
    ensemble = predictor.artifact.model
    columns = predictor.columns(_instances(rows, predictor.features))
    explanations = explain(predictor, columns, chunk_instances=7)
    predicted, target = _explained_outputs(predictor, columns)
    arrays = ensemble.with_fixed(input_arrays(predictor.numeric, predictor.categorical, columns))
    deep, shallow = (attribute(ensemble.members[name], arrays, target=target) for name in ("deep", "shallow"))
    for i, explanation in enumerate(explanations):
        attribution = _attribution(explanation)
        gap, delta = _gap(attribution)
        assert abs(gap) <= COMPLETENESS * max(abs(delta), 1e-12)
        assert attribution["outputIndex"] == [int(target[i])]
        assert attribution["instanceOutputValue"] == pytest.approx(float(predicted[i]), rel=1e-5)
        expected = 0.3 * deep.values[i, :-1] + 0.7 * shallow.values[i, :-1]  # the segment is last: folded
        np.testing.assert_allclose(list(attribution["featureAttributions"].values()), expected, rtol=1e-12)
    assert explanations == explain(predictor, columns, chunk_instances=1024)  # chunks change nothing


def test_integrated_gradients_refuses_other_kinds(gbt_models, rows):
    predictor = Predictor.load(gbt_models[Task.BINARY])
    columns = predictor.columns(_instances(rows, predictor.features, n=2))
    with pytest.raises(ValueError, match="integrated gradients explain Keras models; this is a gbt model"):
        integrated_gradients(predictor, columns)
    with pytest.raises(UserError, match="step_count 0 must be an integer from 1 to 100"):
        explain(predictor, columns, steps=0)


def test_trees_whose_leaves_overflow_are_a_fault_of_the_model(gbt_models, rows, tmp_path):
    """Leaves near float32's largest: the expected margin (the baseline) overflows, so no instance is to blame."""
    import xgboost as xgb

    predictor = Predictor.load(gbt_models[Task.REGRESSION])
    trees = predictor.artifact.model
    document = json.loads(bytes(trees.booster.save_raw(raw_format="json")))
    for tree in document["learner"]["gradient_booster"]["model"]["trees"][:2]:
        leaves = [i for i, left in enumerate(tree["left_children"]) if left == -1]
        for i in leaves:
            tree["split_conditions"][i] = tree["base_weights"][i] = 3.0e38
    trees.booster = xgb.Booster(model_file=bytearray(json.dumps(document).encode()))
    columns = predictor.columns(_instances(rows, predictor.features, n=3))
    with pytest.raises(ModelOutputError, match="at the explanation baseline .* is not finite"):
        explain(predictor, columns)


def test_the_local_twin_explains_trees_and_ensembles_over_http(gbt_models, ensembles, rows, tmp_path, serve):
    """The real server on loopback, called by the official Vertex client and by plain HTTP."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.aiplatform_v1 import PredictionServiceClient
    from google.cloud.aiplatform_v1.services.prediction_service.transports.rest import (
        PredictionServiceRestTransport,
    )

    from fleetops.platform import connect, local_uri
    from fleetops.platform.endpoints import check_explainable

    platform = connect(local_uri(tmp_path / "home"))
    for name, artifact in (("churn-trees", gbt_models[Task.BINARY]), ("churn-ensemble", ensembles[Task.BINARY])):
        platform.registry.upload_version(name, artifact)
        platform.endpoints.create(name)
        endpoint, deployed_id = platform.endpoints.deploy(name, name, "1")
        check_explainable(name, endpoint.deployed(deployed_id))  # on its own nodes: explainable, whatever its kind
    server = serve(platform.home)
    transport = PredictionServiceRestTransport(
        host=f"127.0.0.1:{server.port}", credentials=AnonymousCredentials(), url_scheme="http"
    )
    client = PredictionServiceClient(transport=transport)
    for name, artifact in (("churn-trees", gbt_models[Task.BINARY]), ("churn-ensemble", ensembles[Task.BINARY])):
        predictor = Predictor.load(artifact)
        instances = _instances(rows, predictor.features, n=3)
        resource = f"projects/local/locations/local/endpoints/{name}"
        status, payload = server.request("POST", f"/v1/{resource}:explain", {"instances": instances})
        assert status == 200, payload
        assert len(payload["predictions"]) == len(payload["explanations"]) == 3
        local = explain(predictor, predictor.columns(instances))
        for i, explanation in enumerate(payload["explanations"]):
            attribution, expected = _attribution(explanation), _attribution(local[i])
            _check_vertex_shape(attribution, predictor)
            assert attribution["instanceOutputValue"] == pytest.approx(payload["predictions"][i]["scores"][1], rel=1e-5)
            assert attribution["featureAttributions"] == pytest.approx(expected["featureAttributions"], rel=1e-6)
            for key in ("baselineOutputValue", "instanceOutputValue"):
                assert attribution[key] == pytest.approx(expected[key], rel=1e-6)
        explained = client.explain(endpoint=resource, instances=instances[:1])
        attribution = explained.explanations[0].attributions[0]
        features = dict(attribution.feature_attributions)
        assert set(features) == set(predictor.features) and attribution.output_display_name == "1"
        delta = attribution.instance_output_value - attribution.baseline_output_value
        assert sum(features.values()) == pytest.approx(delta, rel=1e-4, abs=1e-6)
