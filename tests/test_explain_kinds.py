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
from fleetops.training.trainer import class_names, encode_labels, fit
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
COMPLETENESS = 1e-5  # relative: TreeSHAP is exact, the rescaling too, up to float error


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
def test_gbt_attributions_keep_treeshaps_shares(gbt_models, rows, task):
    """Rescaled to the output's units, each instance's attributions stay proportional to TreeSHAP's margins."""
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
        np.testing.assert_allclose(values, margins * (p - p_base) / margins.sum(), rtol=1e-9, atol=1e-15)


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
    """Only `signal` matters: the label is 10 (regression) or 1 (binary) when it is above 0.5, else 0."""
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
    return frame


def _one_feature_model(task: Task, directory, **training):
    from fleetops.spec import TrainingSpec

    frame = _one_feature_rows(task)
    numeric, categorical = ["signal", "noise_a", "noise_b"], ["colour"]
    typed = coerce_features(frame, numeric, categorical)
    params = TrainingSpec(**training)
    vocabularies = {"colour": ["blue", "green", "red"]}
    y = frame["y"].to_numpy()
    model, _ = fit_trees(typed, typed, y, y, task, numeric, categorical, vocabularies, params, 2)
    classes = ["0", "1"] if task is Task.BINARY else []
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
