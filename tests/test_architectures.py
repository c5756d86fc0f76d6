"""Architectures gbt and ensemble, the global model as a candidate, and the visible choice between them."""

import json

import numpy as np
import pandas as pd
import pytest
import xgboost

from fleetops.data.sample import SAMPLE_SPEC, make_churn
from fleetops.data.split import SPLIT_COLUMN, TEST, VALIDATION, with_splits
from fleetops.data.validation import coerce_features, segment_values, validate
from fleetops.errors import SpecError
from fleetops.serving.predictor import Predictor
from fleetops.spec import parse_spec
from fleetops.training.artifact import load_artifact, read_metadata
from fleetops.training.ensemble import combine, cross_fitted, fit_weights, simplex
from fleetops.training.packed import train_global_candidate, train_pack
from fleetops.training.segments import SEGMENT_COLUMN, class_names, encode_labels, train_segment

FAST = {"epochs": 8, "batch_size": 32, "hidden_units": [8], "early_stopping_patience": 2, "seed": 5, "num_trees": 60}
ALL = ["linear", "dnn", "gbt", "ensemble"]


def _spec(architectures=ALL, **training):
    base = parse_spec(SAMPLE_SPEC.format(source="x.csv")).model_dump(mode="json")
    return parse_spec(base | {"architectures": architectures, "training": base["training"] | FAST | training})


def _rows(spec, segments=3, rows=300, seed=3):
    df = make_churn(rows_per_segment=rows, segments=segments, seed=seed)
    df[SEGMENT_COLUMN] = segment_values(df, spec)
    return with_splits(df, spec.data.split, spec.data.split_key)


def _instances(frame, spec):
    typed = coerce_features(frame, spec.features.numeric, spec.features.categorical)
    out = []
    for _, row in typed.iterrows():
        item = {c: (None if pd.isna(row[c]) else float(row[c])) for c in spec.features.numeric}
        out.append(item | {c: row[c] for c in spec.features.categorical})
    return out


def test_every_candidate_competes_and_the_choice_is_recorded(tmp_path):
    spec = _spec()
    rows = _rows(spec)
    results = train_pack(rows, spec, tmp_path, log=lambda *_: None)
    assert len(results) == 3
    for result in results:
        metadata = read_metadata(result.artifact_dir)
        selection = metadata["selection"]
        assert set(selection["candidates"]) == {"linear", "dnn", "gbt", "ensemble"}
        values = {k: v["validation"] for k, v in selection["candidates"].items()}
        assert all(v is not None for v in values.values()) and all(
            selection["candidates"][k]["test"] is not None for k in values
        )
        assert selection["chosen"] == max(values, key=values.get) == result.architecture
        assert selection["reason"].startswith(f"{result.architecture} has the best validation auRoc")
        # What the artifact serves scores the segment's test rows as the selection recorded.
        test = rows[(rows[SEGMENT_COLUMN] == result.segment) & (rows[SPLIT_COLUMN] == TEST)]
        artifact = load_artifact(result.artifact_dir)
        from fleetops.evaluation.metrics import classification_metrics

        y = encode_labels(test[spec.label], artifact.classes)
        auc = classification_metrics(y, artifact.scores(test), artifact.classes)["auRoc"]
        assert auc == pytest.approx(selection["candidates"][result.architecture]["test"], abs=1e-5)
        # Served over the predictor (the server's path) as scored offline.
        predictor = Predictor.load(result.artifact_dir)
        served = predictor.predict_columns(predictor.columns(_instances(test.iloc[:5], spec)))
        np.testing.assert_allclose(served, artifact.scores(test.iloc[:5]), atol=1e-5)


def test_gbt_artifact_is_the_booster_with_its_encoding(tmp_path):
    spec = _spec(["gbt"])
    rows = _rows(spec, segments=1)
    result = train_pack(rows, spec, tmp_path, log=lambda *_: None)[0]
    metadata = read_metadata(result.artifact_dir)
    assert metadata["format"] == "fleetops-gbt/1" and metadata["architecture"] == "gbt"
    assert 1 <= metadata["rounds_trained"] <= 60
    booster = xgboost.Booster(model_file=str(result.artifact_dir / "model.ubj"))
    assert booster.num_boosted_rounds() == metadata["rounds_trained"]
    # Unknown and missing categories score (as missing), missing numbers too.
    predictor = Predictor.load(result.artifact_dir)
    instance = {c: None for c in spec.features.numeric} | {c: "never-seen" for c in spec.features.categorical}
    out = predictor.predict_columns(predictor.columns([instance]))
    assert out.shape == (1, 2) and np.isfinite(out).all()


def test_ensemble_serves_the_weighted_average_of_its_members(tmp_path):
    spec = _spec(["linear", "gbt", "ensemble"])
    rows = _rows(spec, segments=2)
    for result in train_pack(rows, spec, tmp_path, log=lambda *_: None):
        metadata = read_metadata(result.artifact_dir)
        weights = metadata["ensemble_weights"] if result.architecture == "ensemble" else None
        if weights is None:
            continue
        assert sum(weights.values()) == pytest.approx(1.0)
        test = rows[(rows[SEGMENT_COLUMN] == result.segment) & (rows[SPLIT_COLUMN] == TEST)]
        members = {
            m["name"]: load_artifact(result.artifact_dir / "members" / m["name"])
            for m in metadata["ensemble"]["members"]
        }
        expected = sum(weights[name] * artifact.scores(test) for name, artifact in members.items())
        np.testing.assert_allclose(load_artifact(result.artifact_dir).scores(test), expected, atol=1e-5)


def test_per_segment_trainer_records_the_same_choice(tmp_path):
    spec = _spec(["linear", "gbt", "ensemble"], trainer="per_segment")
    rows = _rows(spec, segments=1)
    result = train_segment(rows, spec, rows[SEGMENT_COLUMN].iloc[0], tmp_path / "one")
    selection = read_metadata(tmp_path / "one")["selection"]
    assert set(selection["candidates"]) == {"linear", "gbt", "ensemble"}
    assert selection["chosen"] == result.architecture


def test_a_candidate_that_fails_is_recorded_and_the_others_compete(tmp_path, monkeypatch):
    spec = _spec(["linear", "gbt"])
    rows = _rows(spec, segments=2)
    victim = sorted(rows[SEGMENT_COLUMN].unique())[0]
    victim_train = int(((rows[SEGMENT_COLUMN] == victim) & (rows[SPLIT_COLUMN] == "train")).sum())
    real_update = xgboost.Booster.update

    def failing(self, dtrain, *args, **kwargs):  # a library fault on one segment's rows only
        if dtrain.num_row() == victim_train:
            raise xgboost.core.XGBoostError("out of memory (injected)")
        return real_update(self, dtrain, *args, **kwargs)

    monkeypatch.setattr(xgboost.Booster, "update", failing)
    results = {r.segment: r for r in train_pack(rows, spec, tmp_path, log=lambda *_: None)}
    assert results[victim].architecture == "linear"
    selection = read_metadata(results[victim].artifact_dir)["selection"]
    assert "out of memory (injected)" in selection["failed"]["gbt"] and set(selection["candidates"]) == {"linear"}
    other = next(s for s in results if s != victim)
    assert "gbt" in read_metadata(results[other].artifact_dir)["selection"]["candidates"]


def test_the_global_candidate_competes_and_serves_a_segment_with_its_segment_fixed(tmp_path):
    # Many small segments with the same relationship: the fleet-wide model has 12x the rows.
    spec = _spec(["linear", "gbt"], candidates=["segment", "global"])
    df = make_churn(rows_per_segment=90, segments=12, seed=11)
    df[SEGMENT_COLUMN] = segment_values(df, spec)
    rows = with_splits(df, spec.data.split, spec.data.split_key)
    candidate = train_global_candidate(rows, spec, tmp_path / "global", log=lambda *_: None)
    assert "region" in candidate.predictor.categorical
    results = train_pack(rows, spec, tmp_path / "models", log=lambda *_: None, global_candidate=candidate)
    chosen = {r.segment: r.architecture for r in results}
    winners = [s for s, a in chosen.items() if a.startswith("global_")]
    assert winners, f"the global model won no segment: {chosen}"
    for result in results:
        selection = read_metadata(result.artifact_dir)["selection"]
        assert selection["candidates"]["global"]["architecture"] == candidate.architecture
        own = selection["candidates"][selection["chosen"]]["validation"]
        if own is not None and selection["candidates"]["global"]["validation"] is not None:
            assert selection["global_margin"] is not None
    segment = winners[0]
    # The one-at-a-time trainer scores the same global candidate and makes the same choice.
    alone = train_segment(
        rows[rows[SEGMENT_COLUMN] == segment], spec, segment, tmp_path / "alone", global_candidate=candidate
    )
    assert alone.architecture == f"global_{candidate.architecture}"
    directory = next(r.artifact_dir for r in results if r.segment == segment)
    metadata = read_metadata(directory)
    assert metadata["ensemble"]["fixed_features"] == {"region": segment}
    test = rows[(rows[SEGMENT_COLUMN] == segment) & (rows[SPLIT_COLUMN] == TEST)]
    predictor = Predictor.load(directory)  # requests do not carry the segment column
    assert "region" not in predictor.features
    served = predictor.predict_columns(predictor.columns(_instances(test.iloc[:4], spec)))
    typed = coerce_features(test.iloc[:4], spec.features.numeric, spec.features.categorical)
    np.testing.assert_allclose(served, candidate.outputs(segment, typed), atol=1e-6)


def test_ensemble_weights_are_fitted_and_cross_fitted_on_validation_only():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.where(y == 1, 0.8, 0.2)
    noise = rng.uniform(0, 1, 400)
    outputs = {"good": np.stack([1 - good, good], 1), "noise": np.stack([1 - noise, noise], 1)}
    weights = fit_weights("binary_classification", y, outputs)
    assert weights == {"good": 1.0, "noise": 0.0}
    assert len(simplex(["a", "b", "c"])) == 231
    assert all(sum(w.values()) == pytest.approx(1) for w in simplex(["a", "b"]))
    honest = cross_fitted("binary_classification", y, outputs)
    np.testing.assert_allclose(honest, combine(outputs, weights))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architectures": ["linear", "forest"]}, "architectures.1"),
        ({"architectures": ["ensemble", "gbt"]}, "needs at least two of linear, dnn, gbt"),
        ({"training": {"max_depth": 40}}, "training.max_depth"),
        ({"training": {"tree_learning_rate": 0}}, "training.tree_learning_rate"),
        ({"training": {"candidates": ["global"]}}, "must include 'segment'"),
        ({"architectures": ["gbt"], "serving": {"cohosting": "pool"}}, "cannot be co-hosted"),
        (
            {"tuning": {"enabled": True, "parameters": {"max_depth": {"type": "integer", "min": 2, "max": 64}}}},
            "tuning.parameters.max_depth: 64.0 is outside what max_depth allows",
        ),
        (
            {"tuning": {"enabled": True, "parameters": {"architecture": {"type": "categorical", "values": ["svm"]}}}},
            "tuning.parameters.architecture",
        ),
    ],
)
def test_bad_architecture_settings_are_refused_naming_the_field(change, message):
    base = parse_spec(SAMPLE_SPEC.format(source="x.csv")).model_dump(mode="json")
    for key, value in change.items():
        base[key] = base[key] | value if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_spec(base)


def test_global_candidate_needs_a_segment_column():
    base = parse_spec(SAMPLE_SPEC.format(source="x.csv")).model_dump(mode="json")
    base["data"]["segment_column"] = None
    base["training"]["candidates"] = ["segment", "global"]
    with pytest.raises(SpecError, match="needs data.segment_column"):
        parse_spec(base)


def test_a_categorical_feature_with_ten_thousand_values_trains_and_is_reported(tmp_path):
    spec = _spec(["gbt"])
    rows = _rows(spec, segments=1, rows=12_000)
    rows["plan"] = [f"plan-{i}" for i in range(len(rows))]  # 12,000 distinct values
    report = validate(rows.drop(columns=[SEGMENT_COLUMN, SPLIT_COLUMN]), spec)
    assert any("categorical feature 'plan' has 12,000 distinct values" in w for w in report.warnings)
    result = train_pack(rows, spec, tmp_path, log=lambda *_: None)[0]
    encoding = read_metadata(result.artifact_dir)["encoding"]
    assert len(encoding["vocabularies"]["plan"]) == 1000
    assert json.loads((result.artifact_dir / "metadata.json").read_text())["architecture"] == "gbt"
    assert class_names(rows[spec.label]) == ["0", "1"]
    assert VALIDATION in set(rows[SPLIT_COLUMN])


def test_the_boosting_loop_stops_where_xgboost_train_stops():
    """`fit_booster`'s loop against xgb.train with early stopping: the same best round and the same trees."""
    from fleetops.spec import Task
    from fleetops.training.model import fit_vocabularies
    from fleetops.training.trees import fit_trees

    spec = _spec(["gbt"], num_trees=300)
    rows = coerce_features(_rows(spec, segments=4), spec.features.numeric, spec.features.categorical)
    for _, segment in rows.groupby(SEGMENT_COLUMN):
        train, validation = segment[segment[SPLIT_COLUMN] == "train"], segment[segment[SPLIT_COLUMN] == VALIDATION]
        y_train, y_validation = train[spec.label].to_numpy(), validation[spec.label].to_numpy()
        args = (spec.features.numeric, spec.features.categorical, fit_vocabularies(train, spec), spec.training, 2)
        model, rounds = fit_trees(train, validation, y_train, y_validation, Task.BINARY, *args)
        kind = {"feature_types": model.feature_types, "enable_categorical": True}
        d_train = xgboost.DMatrix(model.frame_matrix(train), label=y_train, **kind)
        d_validation = xgboost.DMatrix(model.frame_matrix(validation), label=y_validation, **kind)
        params = {
            "objective": "binary:logistic",
            "eval_metric": "logloss",
            "tree_method": "hist",
            "max_depth": spec.training.max_depth,
            "eta": spec.training.tree_learning_rate,
            "seed": spec.training.seed,
            "nthread": 1,
            "max_cat_to_onehot": 1,
        }
        reference = xgboost.train(
            params, d_train, 300, evals=[(d_validation, "validation")], early_stopping_rounds=10, verbose_eval=False
        )
        assert rounds == reference.best_iteration + 1
        x = model.frame_matrix(segment)
        np.testing.assert_array_equal(model.booster.inplace_predict(x), reference[:rounds].inplace_predict(x))


def test_shard_encoding_is_each_segments_own_vocabulary(monkeypatch):
    """`encode_tree_inputs` (one join per column) gives each segment the codes of its own `fit_vocabularies`."""
    import fleetops.data.validation as validation
    from fleetops.training.candidates import encode_tree_inputs
    from fleetops.training.model import fit_vocabularies
    from fleetops.training.trees import TreeModel

    monkeypatch.setattr(validation, "MAX_VOCABULARY", 3)  # so that a segment with more takes the fallback
    import fleetops.training.model as model_module

    monkeypatch.setattr(model_module, "MAX_VOCABULARY", 3)
    spec = _spec(["gbt"])
    rows = coerce_features(_rows(spec, segments=3), spec.features.numeric, spec.features.categorical)
    rows.loc[rows.index[:40], "payment_method"] = [f"p{i % 7}" for i in range(40)]  # one segment: 7+ values
    frames = {name: frame for name, frame in rows.groupby(SEGMENT_COLUMN)}
    inputs = encode_tree_inputs(frames, spec, ["0", "1"])
    for s, frame in enumerate(frames.values()):
        vocabularies = fit_vocabularies(frame[frame[SPLIT_COLUMN] == "train"], spec)
        assert {c: inputs.vocabularies[c][s] for c in spec.features.categorical} == vocabularies
        expected = TreeModel(None, spec.task.value, spec.features.numeric, spec.features.categorical, vocabularies)
        np.testing.assert_array_equal(inputs.x[inputs.starts[s] : inputs.starts[s + 1]], expected.frame_matrix(frame))
